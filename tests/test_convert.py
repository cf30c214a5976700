"""HuggingFace transformers and scenic checkpoints: parity, round trips, errors."""
import json
import os

import flax
import numpy as np
import pytest
import torch
from ml_collections import ConfigDict
from transformers import VivitConfig, VivitForVideoClassification, VivitModel

from helpers import random_params, random_video, tiny_model_config
from vivit.checkpoints import load_params
from vivit.convert import (from_hf_pixel_values, from_scenic, from_transformers,
                           to_hf_pixel_values, to_transformers)
from vivit.convert.__main__ import main as convert_main
from vivit.models import build_model

# (image size, frames, tubelet (t, h, w), hidden, layers, heads, mlp, labels)
HF_CASES = [
    (32, 8, (2, 16, 16), 64, 2, 4, 96, 7),   # head_dim 16: the fused CPU kernel
    (24, 9, (3, 8, 4), 24, 3, 2, 40, 3),     # odd tubelet, 9 frames
    (16, 5, (1, 8, 8), 64, 1, 8, 128, 10),   # per-frame tubelet, odd frame count
]


def _random_hf(model_cls, hf_config, seed=0):
  torch.manual_seed(seed)
  model = model_cls(hf_config).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.copy_(torch.randn_like(p) * 0.3)
  return model


def _hf_logits(model, video):
  with torch.no_grad():
    out = model(pixel_values=torch.from_numpy(to_hf_pixel_values(video)))
  return (out.logits if hasattr(out, 'logits') else out.pooler_output).numpy()


@pytest.mark.parametrize('case', HF_CASES, ids=lambda c: f'{c[0]}px-{c[1]}f-t{c[2]}')
def test_from_transformers_matches_hf_logits_and_round_trips(case, tmp_path):
  image, frames, tubelet, hidden, layers, heads, mlp, labels = case
  hf_config = VivitConfig(image_size=image, num_frames=frames, tubelet_size=list(tubelet),
                          hidden_size=hidden, num_hidden_layers=layers,
                          num_attention_heads=heads, intermediate_size=mlp,
                          num_labels=labels)
  hf = _random_hf(VivitForVideoClassification, hf_config)
  hf.save_pretrained(tmp_path / 'hf')
  config, params = from_transformers(str(tmp_path / 'hf'))
  assert (config.variant, tuple(config.tubelet), tuple(config.input_size)) == (
      'spatio_temporal', tubelet, (frames, image, image))
  video = random_video(batch=2, size=(frames, image, image), seed=1)
  ours = np.asarray(build_model(config).apply({'params': params}, video))
  expected = _hf_logits(hf, video)
  assert np.abs(expected).max() > 0.1
  assert np.abs(ours - expected).max() < 1e-5

  to_transformers(config, params, str(tmp_path / 'export'))
  reloaded = VivitForVideoClassification.from_pretrained(str(tmp_path / 'export')).eval()
  assert np.abs(_hf_logits(reloaded, video) - expected).max() < 1e-5


def test_vivit_model_with_pooler_and_pytorch_bin(tmp_path):
  hf_config = VivitConfig(image_size=16, num_frames=4, tubelet_size=[2, 8, 8], hidden_size=32,
                          num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
  hf = _random_hf(VivitModel, hf_config)
  # Legacy pickle format, with the in-memory module names of newer transformers (older
  # ones, as at the floors, name their modules as the hub does).
  hf.save_pretrained(tmp_path / 'hf')
  os.remove(tmp_path / 'hf' / 'model.safetensors')
  state = hf.state_dict()
  assert ('layers.0.attention.q_proj.weight' in state
          or 'encoder.layer.0.attention.attention.query.weight' in state)
  torch.save(state, tmp_path / 'hf' / 'pytorch_model.bin')
  config, params = from_transformers(str(tmp_path / 'hf'))
  assert config.num_classes == 0 and config.representation_size == 32
  video = random_video(size=(4, 16, 16))
  ours = np.asarray(build_model(config).apply({'params': params}, video))
  assert np.abs(ours - _hf_logits(hf, video)).max() < 1e-5
  to_transformers(config, params, str(tmp_path / 'export'))
  reloaded = VivitModel.from_pretrained(str(tmp_path / 'export')).eval()
  assert np.abs(_hf_logits(reloaded, video) - ours).max() < 1e-5


def test_hf_pixel_layout_helpers():
  video = random_video()
  pixels = to_hf_pixel_values(video)
  assert pixels.shape == (2, 4, 3, 16, 16)
  np.testing.assert_array_equal(from_hf_pixel_values(pixels), video)


def test_transformers_errors(tmp_path):
  hf_config = VivitConfig(image_size=16, num_frames=4, tubelet_size=[2, 8, 8], hidden_size=32,
                          num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
                          hidden_act='relu')
  VivitForVideoClassification(hf_config).save_pretrained(tmp_path / 'relu')
  with pytest.raises(ValueError, match="hidden_act 'relu' is not supported"):
    from_transformers(str(tmp_path / 'relu'))
  with pytest.raises(FileNotFoundError, match='no config.json'):
    from_transformers(str(tmp_path))
  config = tiny_model_config('factorised_encoder')
  with pytest.raises(ValueError, match="variant 'factorised_encoder'"):
    to_transformers(config, random_params(config), str(tmp_path / 'x'))


def _scenic_model_config(config):
  """The scenic `config.model` that describes our tiny `config`."""
  scenic = ConfigDict()
  scenic.attention_config = ConfigDict({'type': {
      'spatio_temporal': 'spacetime', 'factorised_encoder': 'factorized_encoder',
      'factorised_self_attention': 'factorized_self_attention_block',
      'factorised_dot_product': 'factorized_dot_product_attention'}[config.variant]})
  scenic.attention_config.attention_order = config.attention_order
  t, h, w = config.tubelet
  scenic.patches = ConfigDict({'size': (h, w, t)})
  if config.embedding == 'frame':
    scenic.temporal_encoding_config = ConfigDict(
        {'method': 'temporal_sampling', 'n_sampled_frames': config.num_sampled_frames})
  else:
    scenic.temporal_encoding_config = ConfigDict(
        {'method': '3d_conv', 'kernel_init_method': 'central_frame_initializer'})
  scenic.hidden_size = config.hidden_size
  body = dict(num_layers=config.num_layers, num_heads=config.num_heads,
              mlp_dim=config.mlp_dim)
  if config.variant == 'factorised_encoder':
    scenic.spatial_transformer = ConfigDict(body)
    scenic.temporal_transformer = ConfigDict(dict(config.temporal))
  else:
    scenic.update(body)
  scenic.classifier = config.classifier
  scenic.representation_size = None
  scenic.dropout_rate = 0.0
  scenic.attention_dropout_rate = 0.0
  scenic.stochastic_droplayer_rate = 0.0
  return scenic


@pytest.mark.parametrize('variant,embedding,classifier,layout', [
    ('spatio_temporal', 'tubelet', 'token', 'optimizer'),
    ('factorised_encoder', 'frame', 'token', 'params'),
    ('factorised_encoder', 'tubelet', 'gap', 'optimizer'),
    ('factorised_self_attention', 'tubelet', 'gap', 'params'),
    ('factorised_dot_product', 'frame', 'gap', 'optimizer'),
    ('spatio_temporal', 'tubelet', 'gmp', 'params'),
    ('factorised_encoder', 'tubelet', 'gsp', 'params'),
])
def test_from_scenic_reproduces_logits_exactly(variant, embedding, classifier, layout,
                                               tmp_path):
  config = tiny_model_config(variant, embedding, classifier)
  params = random_params(config)
  numpy_params = jax_to_numpy(params)
  state = ({'optimizer': {'target': numpy_params, 'state': {'step': 7}}}
           if layout == 'optimizer' else {'params': numpy_params, 'global_step': 7})
  ckpt_dir = tmp_path / 'scenic'
  ckpt_dir.mkdir()
  (ckpt_dir / 'checkpoint_3').write_bytes(b'not the latest')
  (ckpt_dir / 'checkpoint_12').write_bytes(flax.serialization.msgpack_serialize(state))

  loaded_config, loaded = from_scenic(str(ckpt_dir), _scenic_model_config(config),
                                      trained_input_size=config.input_size)
  for field in ('variant', 'embedding', 'classifier', 'hidden_size', 'num_layers',
                'num_heads', 'num_classes'):
    assert loaded_config[field] == config[field], field
  video = random_video()
  expected = build_model(config).apply({'params': params}, video)
  got = build_model(loaded_config).apply({'params': loaded}, video)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


def test_from_scenic_infers_input_size_and_new_head(tmp_path):
  config = tiny_model_config('factorised_encoder', input_size=(8, 224, 224), tubelet=(2, 32, 32))
  params = jax_to_numpy(random_params(config))
  path = tmp_path / 'checkpoint_1'
  path.write_bytes(flax.serialization.msgpack_serialize({'params': params}))
  scenic = _scenic_model_config(config)
  loaded_config, loaded = from_scenic(str(path), scenic)
  assert tuple(loaded_config.input_size) == (8, 224, 224)
  loaded_config, loaded = from_scenic(str(path), scenic, num_classes=3)
  assert loaded['output_projection']['kernel'].shape == (16, 3)
  assert not loaded['output_projection']['kernel'].any()


def test_scenic_fields_that_would_not_be_honoured_are_refused(tmp_path):
  config = tiny_model_config()
  path = tmp_path / 'checkpoint_1'
  path.write_bytes(flax.serialization.msgpack_serialize(
      {'params': jax_to_numpy(random_params(config))}))
  for field, value, message in (
      ('classifier', '0', "model.classifier='0' \\(supported: 'token', 'gap'"),
      ('return_prelogits', True, 'model.return_prelogits=True'),
      ('use_bias_in_head', False, 'model.use_bias_in_head \\(not known to vivit-jax\\)')):
    scenic = _scenic_model_config(config)
    scenic[field] = value
    with pytest.raises(ValueError, match=message):
      from_scenic(str(path), scenic, trained_input_size=config.input_size)
  scenic = _scenic_model_config(config)
  scenic.attention_config.spatial_only_baseline = True
  with pytest.raises(ValueError, match='attention_config.spatial_only_baseline=True'):
    from_scenic(str(path), scenic, trained_input_size=config.input_size)


def test_from_scenic_shape_mismatch_names_parameter(tmp_path):
  config = tiny_model_config()
  path = tmp_path / 'ckpt'
  path.write_bytes(flax.serialization.msgpack_serialize(
      {'params': jax_to_numpy(random_params(config))}))
  scenic = _scenic_model_config(config)
  scenic.mlp_dim = 32
  with pytest.raises(ValueError, match='MlpBlock_0/Dense_0/kernel has shape'):
    from_scenic(str(path), scenic, trained_input_size=config.input_size)
  path.write_bytes(flax.serialization.msgpack_serialize({'other': {}}))
  with pytest.raises(ValueError, match='no params under optimizer/target or params'):
    from_scenic(str(path), _scenic_model_config(config), trained_input_size=config.input_size)


def test_convert_cli_writes_loadable_checkpoint(tmp_path, capsys):
  hf_config = VivitConfig(image_size=16, num_frames=4, tubelet_size=[2, 8, 8], hidden_size=32,
                          num_hidden_layers=1, num_attention_heads=4, intermediate_size=48,
                          num_labels=3)
  hf = _random_hf(VivitForVideoClassification, hf_config)
  hf.save_pretrained(tmp_path / 'hf')
  assert convert_main(['--from', 'transformers', '--src', str(tmp_path / 'hf'),
                       '--dst', str(tmp_path / 'ours')]) == 0
  assert 'spatio_temporal' in capsys.readouterr().out
  config, params = load_params(str(tmp_path / 'ours'))
  video = random_video()
  logits = np.asarray(build_model(config).apply({'params': params}, video))
  assert np.abs(logits - _hf_logits(hf, video)).max() < 1e-5
  assert json.loads((tmp_path / 'ours' / 'model_config.json').read_text())['num_classes'] == 3

  # Scenic through the CLI: a scenic config file next to the checkpoint.
  tiny = tiny_model_config()
  (tmp_path / 'checkpoint_5').write_bytes(flax.serialization.msgpack_serialize(
      {'params': jax_to_numpy(random_params(tiny))}))
  scenic = _scenic_model_config(tiny)
  (tmp_path / 'scenic_config.py').write_text(
      'import ml_collections\n'
      f'def get_config():\n  return ml_collections.ConfigDict({scenic.to_dict()!r})\n')
  assert convert_main(['--from', 'scenic', '--src', str(tmp_path / 'checkpoint_5'),
                       '--scenic-config', str(tmp_path / 'scenic_config.py'),
                       '--trained-input-size', '4', '16', '16', '--dst',
                       str(tmp_path / 'from_scenic')]) == 0
  assert os.path.isdir(tmp_path / 'from_scenic' / 'params')


def jax_to_numpy(tree):
  return jax_tree_map(np.asarray, flax.core.unfreeze(tree))


def jax_tree_map(fn, tree):
  return {k: jax_tree_map(fn, v) if isinstance(v, dict) else fn(v) for k, v in tree.items()}
