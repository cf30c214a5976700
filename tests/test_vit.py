"""Initialising ViViT from 2-D ViTs (HF directory and vision_transformer .npz)."""
import os

import numpy as np
import pytest
import torch

from vivit.convert.vit import from_vit, inflate_kernel, read_vit
from helpers import VIT_CLASSES as NUM_CLASSES
from vivit.models import build_model, get_model_config



def model_config(name='Ti/8x2', frames=2, size=16, **overrides):
  config = get_model_config(name, hidden_size=16, num_heads=4, num_layers=2, mlp_dim=24,
                            num_classes=NUM_CLASSES, input_size=(frames, size, size),
                            **overrides)
  config.temporal.update(num_layers=1, num_heads=4, mlp_dim=24)
  return config


def image_and_video(frames):
  image = np.random.RandomState(1).uniform(-1, 1, (1, 16, 16, 3)).astype(np.float32)
  return image, np.repeat(image[:, None], frames, axis=1)


def test_model_1_from_a_vit_is_the_vit_on_a_static_clip(vit):
  """Tubelet (2, p, p), central frame, 2 frames of one image: the ViT's logits."""
  model, hf_dir, npz_path = vit
  image, video = image_and_video(2)
  with torch.no_grad():
    expected = model(pixel_values=torch.tensor(image.transpose(0, 3, 1, 2))).logits.numpy()
  config = model_config()
  for path in (hf_dir, npz_path):
    params = from_vit(path, config, restore_head=True)
    logits = np.asarray(build_model(config).apply({'params': params}, video))
    np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)


def test_npz_and_hf_directory_read_the_same(vit):
  _, hf_dir, npz_path = vit
  a, b = read_vit(hf_dir), read_vit(npz_path)

  def leaves(tree, prefix=''):
    for key, value in sorted(tree.items()):
      yield from (leaves(value, f'{prefix}{key}/') if isinstance(value, dict)
                  else [(prefix + key, value)])
  assert [n for n, _ in leaves(a)] == [n for n, _ in leaves(b)]
  for (_, x), (_, y) in zip(leaves(a), leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_inflation_and_tiled_position_embeddings(vit):
  _, hf_dir, _ = vit
  source = read_vit(hf_dir)
  kernel = source['embedding']['kernel']
  central = inflate_kernel(kernel, 3, 'central_frame')
  np.testing.assert_array_equal(central[1], kernel)
  assert not central[0].any() and not central[2].any()
  np.testing.assert_allclose(inflate_kernel(kernel, 4, 'average_frame').sum(0), kernel,
                             rtol=1e-6)
  params = from_vit(hf_dir, model_config(frames=6))  # 3 time slots
  posemb = params['Transformer']['posembed_input']['pos_embedding'][0]
  vit_posemb = source['Transformer']['posembed_input']['pos_embedding'][0]
  np.testing.assert_array_equal(posemb[0], vit_posemb[0])  # CLS kept
  np.testing.assert_array_equal(posemb[1:], np.tile(vit_posemb[1:], (3, 1)))


def test_model_3_is_the_vit_per_frame_then_average_pooling(vit):
  """With zero temporal attention, model 3 on 4 frames = the mean over its two time
  slots of the ViT without CLS (model 1, gap) on each 2-frame slot."""
  _, hf_dir, _ = vit
  _, video = image_and_video(4)
  video = video + np.random.RandomState(2).normal(0, 0.2, video.shape).astype(np.float32)
  fsa = model_config('Ti/8x2-FSA', frames=4)
  logits = build_model(fsa).apply({'params': from_vit(hf_dir, fsa, restore_head=True)},
                                  video)
  per_frame = model_config(frames=2, classifier='gap')
  params = from_vit(hf_dir, per_frame, restore_head=True)
  slots = [build_model(per_frame).apply({'params': params}, video[:, i:i + 2])
           for i in (0, 2)]
  np.testing.assert_allclose(logits, np.mean(slots, axis=0), atol=1e-5, rtol=0)
  # 'copy' starts the temporal attention as the spatial one.
  copied = from_vit(hf_dir, fsa, temporal_attention_init='copy')
  block = copied['Transformer']['encoderblock_1']
  np.testing.assert_array_equal(block['MultiHeadDotProductAttention_time']['query']['kernel'],
                                block['MultiHeadDotProductAttention_space']['query']['kernel'])


def test_model_2_spatial_encoder_is_the_vit_and_every_variant_loads(vit):
  _, hf_dir, _ = vit
  source = read_vit(hf_dir)
  fe = model_config('Ti/8x2-FE', frames=4)
  params = from_vit(hf_dir, fe)
  for i in range(2):
    np.testing.assert_array_equal(
        params['SpatialTransformer'][f'encoderblock_{i}']['MlpBlock_0']['Dense_1']['kernel'],
        source['Transformer'][f'encoderblock_{i}']['MlpBlock_0']['Dense_1']['kernel'])
  np.testing.assert_array_equal(params['cls_SpatialTransformer'], source['cls'])
  for config in (fe, model_config('Ti/8x2-FDP', frames=4),
                 model_config(frames=4, embedding='frame', num_sampled_frames=3),
                 model_config(frames=4, size=24)):
    posemb = 'resize_tile' if config.input_size[1] == 24 else 'tile'
    params = from_vit(hf_dir, config, posemb=posemb, kernel_init='average_frame')
    logits = build_model(config).apply({'params': params}, np.zeros(
        (1,) + tuple(config.input_size) + (3,), np.float32))
    assert logits.shape == (1, NUM_CLASSES) and np.isfinite(logits).all()


def test_errors_name_the_parameter_and_shapes(vit, tmp_path):
  _, hf_dir, _ = vit
  deeper = model_config()
  deeper.num_layers = 3
  with pytest.raises(ValueError, match='the ViT has 2 layers, the model 3'):
    from_vit(hf_dir, deeper)
  with pytest.raises(ValueError, match='embedding/kernel: the ViT gives'):
    from_vit(hf_dir, model_config(tubelet=(2, 4, 4)))
  with pytest.raises(ValueError, match='2x2 patch grid and the model 3x3: use posemb'):
    from_vit(hf_dir, model_config(size=24))
  with pytest.raises(ValueError, match="'resize' fills one time slot; the model has 2"):
    from_vit(hf_dir, model_config(frames=4, size=24), posemb='resize')
  spatial = from_vit(hf_dir, model_config('Ti/8x2-FE', frames=4, size=24), posemb='resize')
  assert spatial['SpatialTransformer']['posembed_input']['pos_embedding'].shape == (1, 10, 16)
  with pytest.raises(ValueError, match=r'output_projection/kernel: the ViT gives \(16, 5\)'):
    from_vit(hf_dir, get_model_config('Ti/8x2', hidden_size=16, num_heads=4, num_layers=2,
                                      mlp_dim=24, num_classes=7, input_size=(2, 16, 16)),
             restore_head=True)
  with pytest.raises(FileNotFoundError, match='no ViT checkpoint at'):
    from_vit(str(tmp_path / 'missing.npz'), model_config())
  bad = tmp_path / 'bad.npz'
  bad.write_bytes(b'not a zip')
  with pytest.raises(ValueError, match='neither an .npz ViT checkpoint'):
    from_vit(str(bad), model_config())
  assert os.path.exists(hf_dir)
