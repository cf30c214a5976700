"""The optimiser (`vivit.optim`): learning-rate schedules, optimisers and clipping;
the fine-tuning fields (layer decay, weight-decay exclusions, freezing)."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import ROOT, tiny_model_config, tiny_run_config, training_config
from vivit import cli, optim
from vivit.errors import ConfigError
from vivit.models import init_params, param_shapes, variants
from vivit.recipes import load_config
from vivit.train import train_and_evaluate


def test_schedule_and_optimizer():
  training = training_config(learning_rate=0.1, schedule='cosine', optimizer='sgd',
                             momentum=0.9, weight_decay=0.0, grad_clip=1.0,
                             grad_clip_group=None)
  _, schedule = optim.make_optimizer(training, total_steps=100, warmup_steps=10)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(100)],
                             [0.0, 0.05, 0.1, 0.0], atol=1e-7)
  assert 0.04 < schedule(55) < 0.06
  training.schedule = 'constant'
  _, schedule = optim.make_optimizer(training, 100, 10)
  np.testing.assert_allclose([schedule(5), schedule(50)], [0.05, 0.1], atol=1e-7)
  training.optimizer = 'lamb'
  with pytest.raises(ValueError, match="unknown training.optimizer 'lamb'"):
    optim.make_optimizer(training, 100, 10)
  # Clipping: a huge gradient moves SGD by at most lr * 1.
  training.update(optimizer='sgd', momentum=0.0, schedule='constant')
  optimizer, _ = optim.make_optimizer(training, 100, 0)
  params = {'w': np.zeros(4, np.float32)}
  updates, _ = optimizer.update({'w': np.full(4, 1e6, np.float32)}, optimizer.init(params),
                                params)
  np.testing.assert_allclose(optax.global_norm(updates), 0.1, rtol=1e-5)


def model_params(variant):
  """Random params of a 2-layer model of `variant` (with CLS tokens where it has any)."""
  config = tiny_model_config(variant, classifier='token' if variants.get(variant).has_cls
                             else 'gap')
  rng = np.random.RandomState(0)
  return jax.tree_util.tree_map(lambda x: rng.standard_normal(x.shape).astype(np.float32),
                                param_shapes(config))


def by_name(tree):
  return dict(zip(optim.param_names(tree), map(np.asarray, jax.tree_util.tree_leaves(tree))))


def one_step_updates(training, params, grads):
  """The updates of `make_optimizer(training)`'s first step, by name."""
  optimizer, _ = optim.make_optimizer(training, total_steps=100, warmup_steps=0)
  step = jax.jit(lambda p, g: optimizer.update(g, optimizer.init(p), p)[0])
  return by_name(step(params, grads))


# The learning-rate factor of each parameter of the 2-layer models (model 2: 2 spatial
# + 2 temporal layers) under layer_decay=0.5, by BEiT's numbering: the embeddings
# layer 0, block k layer k, the head depth + 1; factor 0.5 ** (depth + 1 - layer).
LAYER_FACTORS = {
    variants.SPATIO_TEMPORAL: [  # depth 2
        ('embedding/', 0.5 ** 3), ('cls', 0.5 ** 3), ('Transformer/posembed_input/', 0.5 ** 3),
        ('Transformer/encoderblock_0/', 0.5 ** 2), ('Transformer/encoderblock_1/', 0.5),
        ('Transformer/encoder_norm/', 1.0), ('output_projection/', 1.0)],
    variants.FACTORISED_ENCODER: [  # depth 4: spatial blocks 1, 2, temporal 3, 4
        ('embedding/', 0.5 ** 5), ('cls_SpatialTransformer', 0.5 ** 5),
        ('SpatialTransformer/posembed_input/', 0.5 ** 5),
        ('SpatialTransformer/encoderblock_0/', 0.5 ** 4),
        ('SpatialTransformer/encoderblock_1/', 0.5 ** 3),
        # What feeds the temporal encoder: below its first block.
        ('SpatialTransformer/encoder_norm/', 0.5 ** 3), ('cls_TemporalTransformer', 0.5 ** 3),
        ('TemporalTransformer/posembed_input/', 0.5 ** 3),
        ('TemporalTransformer/encoderblock_0/', 0.5 ** 2),
        ('TemporalTransformer/encoderblock_1/', 0.5),
        ('TemporalTransformer/encoder_norm/', 1.0), ('output_projection/', 1.0)],
}


def expected_factor(variant, name):
  (factor,) = [f for prefix, f in LAYER_FACTORS[variant]
               if name == prefix or (prefix.endswith('/') and name.startswith(prefix))]
  return factor


@pytest.mark.parametrize('variant', sorted(LAYER_FACTORS))
def test_layer_decay_gives_each_layer_its_learning_rate(variant):
  """One SGD step on a linear loss (gradient 1 everywhere): each update is -lr x its
  layer's factor. With AdamW and weight decay the factor scales the whole update,
  decay included (BEiT's per-group lr_scale)."""
  params = model_params(variant)
  grads = jax.grad(lambda p: sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(p)))(params)
  values = by_name(params)
  training = training_config(optimizer='sgd', momentum=0.0, learning_rate=0.1,
                             schedule='constant', grad_clip=None, layer_decay=0.5)
  for name, update in one_step_updates(training, params, grads).items():
    np.testing.assert_allclose(update, -0.1 * expected_factor(variant, name), rtol=1e-6,
                               err_msg=name)
  # AdamW's first step is -lr (g / |g| + weight_decay * p), here times the factor.
  training.update(optimizer='adamw', weight_decay=0.5)
  for name, update in one_step_updates(training, params, grads).items():
    np.testing.assert_allclose(update / (-0.1 * expected_factor(variant, name)),
                               1 + 0.5 * values[name], atol=1e-5, err_msg=name)


def test_excluded_parameters_are_not_decayed():
  """A zero gradient, so that weight decay alone moves the params: the decayed ones
  shrink, those `configs/finetune_modern.py` excludes (biases, LayerNorm scales,
  position embeddings, CLS tokens) stay bit-identical; with SGD and AdamW."""
  exclude = load_config(os.path.join(ROOT, 'configs', 'finetune_modern.py')
                        ).training.weight_decay_exclude
  params = model_params(variants.FACTORISED_ENCODER)
  grads = jax.tree_util.tree_map(np.zeros_like, params)
  excluded = {'cls_SpatialTransformer', 'cls_TemporalTransformer', 'embedding/bias',
              'SpatialTransformer/posembed_input/pos_embedding',
              'TemporalTransformer/encoderblock_1/MultiHeadDotProductAttention_0/query/bias',
              'TemporalTransformer/encoder_norm/scale', 'output_projection/bias'}
  decayed = {'embedding/kernel', 'output_projection/kernel',
             'SpatialTransformer/encoderblock_0/MlpBlock_0/Dense_0/kernel'}
  for optimizer in ('sgd', 'adamw'):
    training = training_config(optimizer=optimizer, learning_rate=0.1, schedule='constant',
                               grad_clip=None, weight_decay=0.5,
                               weight_decay_exclude=exclude)
    updates = one_step_updates(training, params, grads)
    for name in excluded:
      assert not updates[name].any(), (optimizer, name)
    for name in decayed:
      assert np.abs(updates[name]).max() > 0, (optimizer, name)
    moved = {name for name, update in updates.items() if update.any()}
    assert not moved & excluded and decayed <= moved
    assert all(n.endswith('/kernel') for n in moved), sorted(moved)


def paper_chain(training):
  """The optimiser `make_optimizer` built before the fine-tuning fields existed."""
  schedule = optim.make_schedule(training, 100, 10)
  parts = []
  if training.grad_clip and not training.grad_clip_group:
    parts.append(optax.clip_by_global_norm(training.grad_clip))
  if training.optimizer == 'sgd':
    if training.weight_decay:
      parts.append(optax.add_decayed_weights(training.weight_decay))
    parts.append(optax.sgd(schedule, momentum=training.momentum or None))
  else:
    parts.append(optax.adamw(schedule, b1=training.b1, b2=training.b2,
                             weight_decay=training.weight_decay))
  return optax.chain(*parts)


def test_the_new_fields_at_their_defaults_leave_the_shipped_optimisers_unchanged():
  """Every shipped config but finetune_modern: the same optimiser state (a checkpoint
  of an earlier run restores) and bit-identical updates over a few random steps."""
  rng = np.random.RandomState(0)
  params = {'kernel': rng.standard_normal((3, 4)).astype(np.float32),
            'bias': rng.standard_normal(4).astype(np.float32)}
  names = [n for n in cli.config_names() if n != 'finetune_modern']
  assert len(names) >= 7
  for name in names:
    training = load_config(cli.config_file(name)).training
    assert (training.layer_decay, training.weight_decay_exclude, training.freeze) == (
        1.0, (), ())
    new, _ = optim.make_optimizer(training, 100, 10)
    old = paper_chain(training)
    new_state, old_state = new.init(params), old.init(params)
    assert (jax.tree_util.tree_structure(new_state)
            == jax.tree_util.tree_structure(old_state)), name
    for _ in range(3):
      grads = jax.tree_util.tree_map(
          lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
      new_updates, new_state = new.update(grads, new_state, params)
      old_updates, old_state = old.update(grads, old_state, params)
      for a, b in zip(jax.tree_util.tree_leaves(new_updates),
                      jax.tree_util.tree_leaves(old_updates)):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_frozen_parameters_are_bit_identical_after_training(data_dir, tmp_path):
  """The real training loop (a few AdamW steps with weight decay, a checkpoint, with
  layer decay and decay exclusions too): the frozen params end bit-identical to
  their initial values, the others moved."""
  config = tiny_run_config(data_dir, **{
      'training.num_steps': 3, 'training.eval_every': 3,
      'training.checkpoint_every': 3, 'eval.num_clips': 1, 'training.weight_decay': 0.1,
      'training.freeze': ('^embedding/', '^Transformer/encoderblock_0/MlpBlock_0/'),
      'training.weight_decay_exclude': ('bias$',), 'training.layer_decay': 0.75})
  result = train_and_evaluate(config, str(tmp_path / 'run'))
  assert result['step'] == 3
  # As the run initialises them (compiled: eager init differs in the last bits).
  initial = jax.jit(lambda: init_params(config.model, jax.random.PRNGKey(config.seed)))()
  trained = by_name(result['params'])
  frozen = 0
  for name, value in by_name(initial).items():
    same = np.array_equal(trained[name], value)
    if name.startswith(('embedding/', 'Transformer/encoderblock_0/MlpBlock_0/')):
      assert same, name
      frozen += 1
    else:
      assert not same, name
  assert frozen == 6  # the embedding's kernel and bias, the MLP's two of each


def test_a_pattern_that_matches_no_parameter_is_one_line(data_dir, tmp_path, capsys):
  """A misspelt name in `training.freeze` / `weight_decay_exclude` (as the
  training command meets it, before the first step), a pattern that is not a regular
  expression, a layer decay out of (0, 1]: each one line naming it."""
  config = tiny_run_config(data_dir, **{'training.freeze': ('^output_projecton/',)})
  run = lambda: cli.run(lambda _: train_and_evaluate(config, str(tmp_path / 'run')) and None, [])
  assert run() == 2
  err = capsys.readouterr().err
  assert err.startswith("error: training.freeze pattern '^output_projecton/' matches no "
                        "parameter of the model; patterns are regular expressions searched "
                        "in names such as 'Transformer/encoder_norm/bias'"), err
  assert err.count('\n') == 1 and "'output_projection/kernel'" in err, err
  training = training_config(weight_decay_exclude=('bias$', 'LayerNorm_9'))
  optimizer, _ = optim.make_optimizer(training, 10, 0)
  with pytest.raises(ConfigError, match="^training.weight_decay_exclude pattern "
                                        "'LayerNorm_9' matches no parameter"):
    optimizer.init(model_params(variants.SPATIO_TEMPORAL))
  for field, value, message in (
      ('training.freeze', ('bias$', '(unclosed'),
       "training.freeze pattern '(unclosed' is not a regular expression: missing ), "),
      ('training.weight_decay_exclude', (3,), 'training.weight_decay_exclude=(3,) is not a '
                                              'tuple of regular expressions'),
      ('training.layer_decay', 1.5, 'training.layer_decay=1.5 is not a finite number > 0 '
                                    'and <= 1')):
    config = tiny_run_config(data_dir, **{field: value})
    assert run() == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {message}') and err.count('\n') == 1, err


class _HeadBesideAFrozenWeight:
  """logits = bias + (w - stop_gradient(w)) * sum(clip) on the first class: `w` changes
  no logit but has a large gradient; without `w`, logits = bias."""

  def __init__(self, with_weight: bool):
    self.with_weight = with_weight

  def apply(self, variables, video, train=False, rngs=None):
    params = variables['params']
    logits = jnp.broadcast_to(params['head']['bias'], (video.shape[0], 3))
    if self.with_weight:
      weight = params['other']['w']
      total = video.reshape(video.shape[0], -1).sum(axis=1, keepdims=True)
      # on the first class only: a softmax's logit gradients sum to zero over classes
      logits = logits + (weight - jax.lax.stop_gradient(weight)) * total * jnp.eye(3)[0]
    return logits


def test_a_frozen_parameters_gradient_is_not_in_the_clipping_norm():
  """Clipped per group of examples (a clip that binds), the head beside a frozen weight
  with a large gradient takes the update and reports the norm it takes alone."""
  from vivit.step import initial_state, train_step
  rng = np.random.RandomState(0)
  batch = {'video': rng.uniform(0, 255, (4, 2, 4, 4, 3)).astype(np.float32),
           'label': rng.randint(0, 3, 4)}
  bias = {'head': {'bias': jnp.zeros(3)}}
  results = []
  for with_weight in (True, False):
    training = training_config(optimizer='sgd', learning_rate=0.1, grad_clip=0.01,
                               grad_clip_group=2, schedule='constant', warmup_epochs=0.0,
                               freeze=('other/w',) if with_weight else ())
    optimizer, _ = optim.make_optimizer(training, 1, 0)
    params = dict(bias, other={'w': jnp.ones(())}) if with_weight else bias
    state, metrics = train_step(initial_state(params, optimizer, training), batch,
                                model=_HeadBesideAFrozenWeight(with_weight),
                                optimizer=optimizer, training=training, num_classes=3,
                                seed=0)
    results.append((state.params['head']['bias'], float(metrics['grad_norm'])))
  (frozen_beside, norm_beside), (alone, norm_alone) = results
  assert norm_alone > 0.01  # the clip binds
  assert norm_beside == pytest.approx(norm_alone, rel=1e-6)
  np.testing.assert_allclose(frozen_beside, alone, rtol=1e-6, atol=0)
