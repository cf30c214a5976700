"""Model shapes, gradients, parameter counts, dtypes, invariants and errors."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import reference
from helpers import (INPUT_SIZE, default_or_slow, random_params, random_video,
                     tiny_model_config)
from vivit.models import (build_model, check_params, get_model_config, init_params,
                          param_shapes, pixels_to_unit_range, vivit_b_16x2,
                          vivit_b_16x2_fe, vivit_l_16x2_fe)
from vivit.models.variants import (FACTORISED_DOT_PRODUCT, FACTORISED_ENCODER,
                                   FACTORISED_SELF_ATTENTION, SPATIO_TEMPORAL)


def test_forward_backward_shapes_and_reference(variant_case):
  """Every paper-allowed variant x embedding x classifier: jit forward/backward,
  finite values, and logits equal to the plain-numpy reference."""
  variant, embedding, classifier = variant_case
  config = tiny_model_config(variant, embedding, classifier)
  model = build_model(config)
  params = random_params(config)
  video = random_video()

  logits = jax.jit(lambda p, v: model.apply({'params': p}, v))(params, video)
  assert logits.shape == (2, config.num_classes)
  assert logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  expected = reference.vivit_batch(video, params, config)
  np.testing.assert_allclose(logits, expected, atol=1e-4, rtol=1e-4)

  def loss(p):
    return jnp.mean(model.apply({'params': p}, video) ** 2)
  grads = jax.jit(jax.grad(loss))(params)
  flat = flax.traverse_util.flatten_dict(grads, sep='/')
  assert all(np.all(np.isfinite(g)) for g in flat.values())
  assert np.abs(flat['embedding/kernel']).sum() > 0


def test_training_mode_uses_dropout_and_stochastic_depth():
  config = tiny_model_config(dropout_rate=0.3, attention_dropout_rate=0.3, stochastic_depth=0.5)
  model, params, video = build_model(config), random_params(config), random_video()
  run = jax.jit(lambda rng: model.apply({'params': params}, video, train=True,
                                        rngs={'dropout': rng}))
  a, b = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2))
  assert np.all(np.isfinite(a)) and np.abs(a - b).max() > 1e-3
  np.testing.assert_array_equal(a, run(jax.random.PRNGKey(1)))
  # Evaluation ignores every rate: equal to the same model without them.
  plain = build_model(tiny_model_config()).apply({'params': params}, video)
  np.testing.assert_allclose(model.apply({'params': params}, video), plain, atol=1e-6)


@pytest.mark.parametrize('variant', [SPATIO_TEMPORAL, FACTORISED_SELF_ATTENTION])
def test_remat_gives_same_gradients(variant):
  config = tiny_model_config(variant, classifier='gap')
  params, video = random_params(config), random_video()
  grads = []
  for remat in (False, True):
    model = build_model(tiny_model_config(variant, classifier='gap', remat=remat))
    grads.append(jax.jit(jax.grad(
        lambda p: jnp.sum(model.apply({'params': p}, video) ** 2)))(params))
  for a, b in zip(jax.tree_util.tree_leaves(grads[0]), jax.tree_util.tree_leaves(grads[1])):
    np.testing.assert_allclose(a, b, atol=1e-5)


def _count(shapes):
  return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))


def _block(d, mlp):
  """Parameters of a standard pre-LN block: 2 LN, q/k/v/out, 2-layer MLP."""
  return 2 * 2 * d + 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d)


def test_vivit_b_param_count_matches_transformers():
  from transformers import VivitConfig, VivitForVideoClassification
  hf = VivitForVideoClassification(VivitConfig(num_labels=400))
  hf_count = sum(p.numel() for p in hf.parameters())
  config = vivit_b_16x2()
  assert config.num_classes == 400
  assert _count(param_shapes(config)) == hf_count


def test_factorised_param_counts_match_formula():
  d, mlp, t, p = 768, 3072, 2, 16
  frames, size, classes = 32, 224, 400
  grid = (size // p) ** 2
  steps = frames // t
  embed = t * p * p * 3 * d + d
  head = d * classes + classes
  norm = 2 * d

  fe = vivit_b_16x2_fe()  # 12 spatial + 4 temporal layers, CLS in both
  expected = (embed + d + (grid + 1) * d + 12 * _block(d, mlp) + norm
              + d + (steps + 1) * d + 4 * _block(d, mlp) + norm + head)
  assert _count(param_shapes(fe)) == expected

  fsa = get_model_config('B/16x2-FSA')
  fsa_block = _block(d, mlp) + 2 * d + 4 * (d * d + d)  # + time LN and attention
  assert _count(param_shapes(fsa)) == embed + steps * grid * d + 12 * fsa_block + norm + head

  fdp = get_model_config('B/16x2-FDP')
  assert _count(param_shapes(fdp)) == embed + steps * grid * d + 12 * _block(d, mlp) + norm + head

  l_fe = vivit_l_16x2_fe(temporal_layers=24)
  dl, mlpl = 1024, 4096
  expected_l = (t * p * p * 3 * dl + dl + dl + (grid + 1) * dl + 24 * _block(dl, mlpl)
                + 2 * dl + dl + (steps + 1) * dl + 24 * _block(dl, mlpl) + 2 * dl
                + dl * classes + classes)
  assert _count(param_shapes(l_fe)) == expected_l


def test_uint8_pixels_are_mapped_to_the_unit_range_on_device():
  pixels = np.random.RandomState(0).randint(0, 256, (2, *INPUT_SIZE, 3)).astype(np.uint8)
  floats = pixels.astype(np.float32) / 127.5 - 1.0
  np.testing.assert_allclose(pixels_to_unit_range(pixels), floats, atol=1e-6)
  np.testing.assert_array_equal(pixels_to_unit_range(floats), floats)  # floats: as they are
  config = tiny_model_config(SPATIO_TEMPORAL)
  model, params = build_model(config), random_params(config)
  np.testing.assert_allclose(model.apply({'params': params}, pixels),
                             model.apply({'params': params}, floats), atol=1e-5)


@pytest.mark.parametrize('variant,classifier', default_or_slow(
    [(SPATIO_TEMPORAL, 'token'), (FACTORISED_ENCODER, 'token'),
     (FACTORISED_SELF_ATTENTION, 'gap'), (FACTORISED_DOT_PRODUCT, 'gap')],
    default=[(SPATIO_TEMPORAL, 'token'), (FACTORISED_DOT_PRODUCT, 'gap')], unpack=True))
def test_bfloat16_close_to_float32(variant, classifier):
  config = tiny_model_config(variant, classifier=classifier)
  params, video = random_params(config), random_video()
  f32 = build_model(config).apply({'params': params}, video)
  config.dtype = 'bfloat16'
  bf16 = build_model(config).apply({'params': params}, video)
  assert bf16.dtype == jnp.float32
  assert all(l.dtype == jnp.float32 for l in jax.tree_util.tree_leaves(
      init_params(config, jax.random.PRNGKey(0))))
  rel = np.abs(np.asarray(bf16) - np.asarray(f32)).max() / np.abs(np.asarray(f32)).max()
  assert rel < 2e-2, rel


def test_factorised_self_attention_without_temporal_attention_is_per_frame():
  """Model 3 with zeroed temporal attention output = its spatial stack per frame:
  logits are then the mean over time steps of the logits of each step alone."""
  config = tiny_model_config(FACTORISED_SELF_ATTENTION, input_size=(6, 16, 16))
  params = flax.core.unfreeze(random_params(config))
  for name, block in params['Transformer'].items():
    if name.startswith('encoderblock'):
      out = block['MultiHeadDotProductAttention_time']['out']
      out['kernel'] = np.zeros_like(out['kernel'])
      out['bias'] = np.zeros_like(out['bias'])
  video = random_video(size=(6, 16, 16))
  full = build_model(config).apply({'params': params}, video)

  step_config = tiny_model_config(FACTORISED_SELF_ATTENTION, input_size=(2, 16, 16))
  pos = params['Transformer']['posembed_input']['pos_embedding']
  per_step, grid = [], 4
  for t in range(3):
    step_params = flax.core.copy(params, {})
    step_params['Transformer'] = dict(params['Transformer'])
    step_params['Transformer']['posembed_input'] = {
        'pos_embedding': pos[:, t * grid:(t + 1) * grid]}
    per_step.append(build_model(step_config).apply(
        {'params': step_params}, video[:, 2 * t:2 * t + 2]))
  np.testing.assert_allclose(full, np.mean(per_step, axis=0), atol=1e-5)
  # And the temporal attention matters when it is not zeroed.
  normal = build_model(config).apply({'params': random_params(config)}, video)
  assert np.abs(normal - np.mean(per_step, axis=0)).max() > 1e-3


def test_factorised_encoder_with_one_time_step_is_spatial_vit():
  """Model 2 on a single time step: its spatial encoder is exactly a ViT (model 1
  with one time step) on that frame, followed by the temporal encoder."""
  config = tiny_model_config(FACTORISED_ENCODER, input_size=(2, 16, 16))
  params = random_params(config)
  video = random_video(size=(2, 16, 16))
  logits = build_model(config).apply({'params': params}, video)

  vit_config = tiny_model_config(SPATIO_TEMPORAL, input_size=(2, 16, 16), num_classes=0)
  vit_params = {'embedding': params['embedding'], 'cls': params['cls_SpatialTransformer'],
                'Transformer': params['SpatialTransformer']}
  frame_features = build_model(vit_config).apply({'params': vit_params}, video)
  p = reference.to_numpy(params)
  expected = []
  for feature in np.asarray(frame_features, np.float64):
    y = reference.with_cls(feature[None], p['cls_TemporalTransformer'])
    y = reference.encoder(y, p['TemporalTransformer'], reference.vit_block)
    expected.append(reference.head(y[0], p))
  np.testing.assert_allclose(logits, np.stack(expected), atol=1e-5)


def test_published_configs():
  b = vivit_b_16x2()
  assert (b.variant, b.hidden_size, b.num_layers, tuple(b.tubelet)) == (
      SPATIO_TEMPORAL, 768, 12, (2, 16, 16))
  fe = vivit_b_16x2_fe()
  assert (fe.variant, fe.num_layers, fe.temporal.num_layers) == (FACTORISED_ENCODER, 12, 4)
  l_fe = vivit_l_16x2_fe()
  assert (l_fe.hidden_size, l_fe.num_heads, l_fe.num_layers, l_fe.mlp_dim) == (
      1024, 16, 24, 4096)
  h = get_model_config('H/14x2-FSA')
  assert (h.hidden_size, h.num_layers, h.classifier, tuple(h.tubelet)) == (
      1280, 32, 'gap', (2, 14, 14))
  with pytest.raises(ValueError, match='unknown model name'):
    get_model_config('XL/16x2')


@pytest.mark.parametrize('overrides,message', [
    (dict(variant='joint'), "unknown model.variant 'joint'"),
    (dict(variant=FACTORISED_SELF_ATTENTION, classifier='token'),
     f"classifier='token' is not defined for variant {FACTORISED_SELF_ATTENTION!r}"),
    (dict(variant=FACTORISED_DOT_PRODUCT, classifier='token'),
     f"classifier='token' is not defined for variant {FACTORISED_DOT_PRODUCT!r}"),
    (dict(variant=FACTORISED_DOT_PRODUCT, classifier='gap', num_heads=3, hidden_size=18),
     'needs an even num_heads, got 3'),
    (dict(hidden_size=18), 'hidden_size 18 is not divisible by model.num_heads 4'),
    (dict(embedding='voxel'), "unknown model.embedding 'voxel'"),
])
def test_config_errors(overrides, message):
  config = tiny_model_config()
  config.update(overrides)
  with pytest.raises(ValueError, match=message.replace('(', r'\(').replace(')', r'\)')):
    build_model(config)


@pytest.mark.parametrize('size,message', [
    ((5, 16, 16), 'video frame count 5 is not divisible by the tubelet size 2'),
    ((4, 20, 16), 'video height 20 is not divisible by the tubelet size 8'),
    ((4, 16, 12), 'video width 12 is not divisible by the tubelet size 8'),
])
def test_video_not_divisible_by_tubelet(size, message):
  config = tiny_model_config()
  model = build_model(config)
  params = random_params(config)
  with pytest.raises(ValueError, match=message):
    model.apply({'params': params}, random_video(size=size))


def test_frame_embedding_needs_enough_frames():
  config = tiny_model_config(embedding='frame', num_sampled_frames=8)
  with pytest.raises(ValueError, match='num_sampled_frames=8.*clip length 4'):
    init_params(config, jax.random.PRNGKey(0))


def test_check_params_names_the_mismatched_parameter():
  config = tiny_model_config()
  params = flax.core.unfreeze(random_params(config))
  other = tiny_model_config(mlp_dim=32)
  with pytest.raises(ValueError, match=r'Transformer/encoderblock_0/MlpBlock_0/Dense_0/'
                                       r'kernel has shape \(16, 24\) but the model config '
                                       r'needs \(16, 32\)'):
    check_params(other, params)
  del params['Transformer']['encoder_norm']
  with pytest.raises(ValueError, match='missing parameter Transformer/encoder_norm/bias'):
    check_params(config, params)


def test_stochastic_depth_drops_whole_examples_at_the_configured_rate():
  import flax.linen as nn
  import ml_collections
  from vivit.models.encoder import EncoderBlock
  from vivit.models.layers import drop_path

  class Probe(nn.Module):
    rate: float

    @nn.compact
    def __call__(self, x):
      return drop_path(self, x, self.rate, deterministic=False)
  ones = jnp.ones((4000, 3, 2))
  out = np.asarray(Probe(0.3).apply({}, ones, rngs={'dropout': jax.random.PRNGKey(0)}))
  dropped, kept = (out == 0).all(axis=(1, 2)), (out == 1).all(axis=(1, 2))
  assert np.all(dropped | kept)  # a whole example, never part of one; kept: not rescaled
  assert abs(dropped.mean() - 0.3) < 0.03

  # A block whose branches are always dropped is the identity; at rate 0 it is not.
  x = jnp.asarray(np.random.RandomState(0).normal(size=(2, 5, 16)), jnp.float32)
  for rate, identity in ((1.0, True), (0.0, False)):
    block = EncoderBlock(ml_collections.FrozenConfigDict(tiny_model_config()),  # mlp 24, 4 heads
                         droplayer_rate=rate)
    params = block.init(jax.random.PRNGKey(0), x, True)
    y = block.apply(params, x, False, rngs={'dropout': jax.random.PRNGKey(1)})
    assert np.array_equal(np.asarray(y), np.asarray(x)) == identity


def test_uniform_frame_sampling_is_scenics():
  """scenic's sample_frames_uniformly: round(k T / (n + 1)), k = 1..n (half to even)."""
  from vivit.models.vivit import sampled_frame_indices
  assert sampled_frame_indices(32, 8) == [4, 7, 11, 14, 18, 21, 25, 28]
  assert sampled_frame_indices(16, 4) == [3, 6, 10, 13]
  assert sampled_frame_indices(10, 3) == [2, 5, 8]  # 2.5 -> 2, 7.5 -> 8
  assert sampled_frame_indices(16, 8) == [2, 4, 5, 7, 9, 11, 12, 14]
  assert sampled_frame_indices(8, 8) == list(range(8))
  # scenic's float32 arange gives 3 frames for (4, 2): refused, not silently changed.
  with pytest.raises(ValueError, match='scenic samples 3 frames, not num_sampled_frames=2'):
    sampled_frame_indices(4, 2)


@pytest.mark.parametrize('variant', [SPATIO_TEMPORAL, FACTORISED_ENCODER,
                                     FACTORISED_SELF_ATTENTION])
@pytest.mark.parametrize('classifier', ['gmp', 'gsp'])
def test_max_and_sum_pooling_match_the_reference(variant, classifier):
  config = tiny_model_config(variant, 'frame', classifier)
  params, video = random_params(config), random_video()
  logits = build_model(config).apply({'params': params}, video)
  np.testing.assert_allclose(logits, reference.vivit_batch(video, params, config),
                             atol=1e-4, rtol=1e-4)


def test_factorised_encoder_shares_random_drops_across_a_clips_frames():
  """scenic maps the spatial encoder over time with one RNG: dropout and stochastic
  depth decide once per clip, so a static clip's frames stay identical in training,
  while different clips differ."""
  config = tiny_model_config(FACTORISED_ENCODER, dropout_rate=0.3, stochastic_depth=0.9)
  model, params = build_model(config), random_params(config)
  still = np.repeat(random_video(batch=1)[:, :1], 4, axis=1)
  video = np.concatenate([still, still])  # two copies of one static clip

  import dataclasses
  import flax.linen as nn
  from vivit.models import FactorisedEncoderViViT

  class SpatialHalf(FactorisedEncoderViViT):  # the first half of model 2's __call__
    @nn.compact
    def __call__(self, video, *, train=False):
      tokens = self.tokens(video)
      batch, time, height, width, hidden = tokens.shape
      return self.encode(tokens.reshape(batch, time, height * width, hidden),
                         'SpatialTransformer', train, per_frame=True)
  fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.name not in ('parent', 'name')}
  frames = np.asarray(SpatialHalf(**fields).apply(
      {'params': params}, video, train=True, rngs={'dropout': jax.random.PRNGKey(3)}))
  assert frames.shape == (2, 2, 16)  # [clips, time slots, hidden]
  np.testing.assert_array_equal(frames[:, 0], frames[:, 1])
  assert np.abs(frames[0] - frames[1]).max() > 1e-3  # each clip its own draw


def test_factorised_self_attention_has_no_stochastic_depth_unless_asked():
  video = random_video()
  outputs = {}
  for inside in (False, True):
    config = tiny_model_config(FACTORISED_SELF_ATTENTION, stochastic_depth=0.9,
                         fsa_stochastic_depth=inside)
    params = random_params(config)
    run = lambda rng: build_model(config).apply({'params': params}, video, train=True,
                                                rngs={'dropout': rng})
    outputs[inside] = run(jax.random.PRNGKey(1)), run(jax.random.PRNGKey(2))
  np.testing.assert_allclose(outputs[False][0], outputs[False][1], atol=1e-6)
  assert np.abs(outputs[True][0] - outputs[True][1]).max() > 1e-3
