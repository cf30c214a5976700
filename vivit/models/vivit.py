"""ViViT models (Arnab et al., 2021): tokenisers, the four variants, heads.

Every model maps a video `[batch, time, height, width, 3]` (uint8 pixels, or floats in
[-1, 1]) to logits `[batch, num_classes]` (float32, whatever the compute dtype).
"""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vivit.models.encoder import Encoder
from vivit.models.attention import ATTENTION_IMPLEMENTATIONS

Dtype = Any

VARIANTS = ('spatio_temporal', 'factorised_encoder', 'factorised_self_attention',
            'factorised_dot_product')
EMBEDDINGS = ('tubelet', 'frame')
# CLS token, or global average / max / sum pooling of all tokens (scenic's names).
CLASSIFIERS = ('token', 'gap', 'gmp', 'gsp')
TUBELET_INITS = ('central_frame', 'average_frame', 'lecun_normal')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def _tubelet_init(method: str):
  """Initialiser of a `[t, h, w, in, out]` kernel (scenic's 3-D inits)."""
  base = nn.initializers.lecun_normal()
  if method == 'lecun_normal':
    return base

  def init(key, shape, dtype=jnp.float32):
    kernel = base(key, shape, dtype)
    if method == 'central_frame':
      centre = shape[0] // 2
      return jnp.zeros_like(kernel).at[centre].set(kernel[centre])
    return jnp.broadcast_to(kernel[:1], shape)  # average_frame: same filter per frame
  return init


def sampled_frame_indices(num_frames: int, num_sampled: int):
  """Uniform frame sampling exactly as scenic's `sample_frames_uniformly`: frames
  `round(k * T / (n + 1))`, k = 1, 2, ... (a float32 `arange`, halves to even); all T
  when n >= T. Where float32 rounding makes that n + 1 frames, an error."""
  if num_sampled >= num_frames:
    return list(range(num_frames))
  step = num_frames / (num_sampled + 1)
  with jax.ensure_compile_time_eval():  # static indices, also inside jit
    indices = jnp.minimum(jnp.round(jnp.arange(step, num_frames, step, dtype=jnp.float32)),
                          num_frames - 1).astype(jnp.int32).tolist()
  if len(indices) != num_sampled:
    raise ValueError(f'scenic samples {len(indices)} frames, not num_sampled_frames='
                     f'{num_sampled}, from a {num_frames}-frame clip; choose another '
                     f'frame count')
  return indices


def tokenise(video, *, hidden_size: int, embedding: str, tubelet: Tuple[int, int, int],
             num_sampled_frames: Optional[int], tubelet_init: str, dtype: Dtype):
  """Video `[batch, time, height, width, 3]` -> tokens `[batch, t', h', w', hidden]`.

  Call from a compact method: it creates the parent's `embedding` conv.
  `tubelet`: a 3-D conv with kernel = stride = `(t, h, w)`.
  `frame`: `num_sampled_frames` frames sampled uniformly, each cut into `(h, w)`
  patches by a 2-D conv (the time entry of `tubelet` is not used).
  """
  batch, time, height, width, channels = video.shape
  t, h, w = tubelet
  if embedding == 'frame':
    t = 1
  for name, size, patch in (('frame count', time, t), ('height', height, h),
                            ('width', width, w)):
    if size % patch:
      raise ValueError(f'video {name} {size} is not divisible by the tubelet '
                       f'size {patch} (video shape {tuple(video.shape)}, '
                       f'tubelet {tuple(tubelet)})')
  if embedding == 'tubelet':
    return nn.Conv(hidden_size, (t, h, w), strides=(t, h, w), padding='VALID',
                   kernel_init=_tubelet_init(tubelet_init), dtype=dtype,
                   name='embedding')(video)
  num = num_sampled_frames
  if not num or num > time:
    raise ValueError(f'frame embedding samples num_sampled_frames={num} frames; '
                     f'it must be between 1 and the clip length {time}')
  video = video[:, np.asarray(sampled_frame_indices(time, num))]
  # Frames stacked along height: one 2-D conv embeds every frame (scenic's layout).
  x = nn.Conv(hidden_size, (h, w), strides=(h, w), padding='VALID', dtype=dtype,
              name='embedding')(video.reshape(batch, num * height, width, channels))
  return x.reshape(batch, num, height // h, width // w, hidden_size)


def _pool(x, classifier: str):
  """`[..., tokens, hidden]` -> `[..., hidden]`: the CLS token, or the mean, max or
  sum of all tokens."""
  if classifier == 'token':
    return x[..., 0, :]
  return {'gap': jnp.mean, 'gmp': jnp.max, 'gsp': jnp.sum}[classifier](x, axis=-2)


def classify(x, *, num_classes: int, representation_size: Optional[int]):
  """Optional `pre_logits` (Dense + tanh), then zero-initialised `output_projection`.

  Call from a compact method. `num_classes=0` returns the representation itself.
  """
  x = x.astype(jnp.float32)
  if representation_size is not None:
    x = jnp.tanh(nn.Dense(representation_size, name='pre_logits')(x))
  if not num_classes:
    return x
  return nn.Dense(num_classes, kernel_init=nn.initializers.zeros,
                  name='output_projection')(x)


def check_video(video) -> None:
  """ValueError naming what is wrong with a model input that is not
  `[batch, time, height, width, 3]` uint8 pixels or floats."""
  shape = tuple(video.shape)
  if len(shape) != 5:
    raise ValueError(f'video must be [batch, time, height, width, 3], got shape {shape}')
  if shape[-1] != 3:
    raise ValueError(f'video must have 3 (RGB) channels, got {shape[-1]} channels '
                     f'(shape {shape})')
  if not (video.dtype == jnp.uint8 or jnp.issubdtype(video.dtype, jnp.floating)):
    raise ValueError(f'video dtype {jnp.dtype(video.dtype).name} is neither uint8 '
                     f'pixels nor floats in [-1, 1]')


def pixels_to_unit_range(video, dtype=jnp.float32):
  """uint8 pixels -> `dtype` in [-1, 1] (scenic's input range); floats are taken to
  be in that range already and only cast. Batches cross to the device as uint8 (a
  quarter of float32's bytes) and are converted here, on the device."""
  if video.dtype == jnp.uint8:
    return (video.astype(jnp.float32) / 127.5 - 1.0).astype(dtype)
  return jnp.asarray(video, dtype)


class VideoTransformer(nn.Module):
  """Fields shared by every variant (see `vivit.models.configs`)."""
  num_classes: int
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  embedding: str = 'tubelet'
  tubelet: Tuple[int, int, int] = (2, 16, 16)
  num_sampled_frames: Optional[int] = None
  tubelet_init: str = 'central_frame'
  classifier: str = 'token'
  representation_size: Optional[int] = None
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  fsa_stochastic_depth: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32
  attention: str = 'auto'

  def encode(self, x, name: str, train: bool, per_frame: bool = False, **encoder_args):
    """Optional CLS token, then an `Encoder`: `[n, tokens, hidden]` -> pooled
    `[n, hidden]`. `per_frame`: `[n, time, tokens, hidden]` -> `[n, time, hidden]`,
    one encoder mapped over time that shares its random numbers across the frames
    of a clip (scenic's `jax.vmap`: a clip's frames drop the same layers and units).
    Call from a compact method."""
    if self.classifier == 'token':
      suffix = '' if name == 'Transformer' else f'_{name}'
      cls = self.param(f'cls{suffix}', nn.initializers.zeros, (1, 1, x.shape[-1]))
      cls = jnp.broadcast_to(cls, x.shape[:-2] + (1, x.shape[-1])).astype(x.dtype)
      x = jnp.concatenate([cls, x], axis=-2)
    encoder_args = {'num_layers': self.num_layers, 'mlp_dim': self.mlp_dim,
                    'num_heads': self.num_heads, **encoder_args}
    encoder = Encoder
    if per_frame:
      encoder = nn.vmap(Encoder, in_axes=(1, None), out_axes=1,
                        variable_axes={'params': None},
                        split_rngs={'params': False, 'dropout': False})
    x = encoder(dropout_rate=self.dropout_rate,
                attention_dropout_rate=self.attention_dropout_rate,
                stochastic_depth=self.stochastic_depth,
                fsa_stochastic_depth=self.fsa_stochastic_depth, remat=self.remat,
                dtype=self.dtype, attention=self.attention, name=name,
                **encoder_args)(x, train)
    return _pool(x, self.classifier)

  def tokens(self, video):
    """`[batch, time, height, width, 3]` (uint8 pixels or floats in [-1, 1]) ->
    `[batch, t', h', w', hidden]`."""
    check_video(video)
    return tokenise(pixels_to_unit_range(video, self.dtype), hidden_size=self.hidden_size,
                    embedding=self.embedding, tubelet=self.tubelet,
                    num_sampled_frames=self.num_sampled_frames,
                    tubelet_init=self.tubelet_init, dtype=self.dtype)

  def head(self, x):
    return classify(x, num_classes=self.num_classes,
                    representation_size=self.representation_size)


class ViViT(VideoTransformer):
  """Models 1, 3 and 4: one encoder over all space-time tokens.

  `variant`: 'spatio_temporal' (joint attention), 'factorised_self_attention'
  (per block: time attention, space attention, MLP) or 'factorised_dot_product'
  (half the heads over time, half over space).
  """
  variant: str = 'spatio_temporal'
  attention_order: str = 'time_space'

  @nn.compact
  def __call__(self, video, *, train: bool = False):
    """`[batch, time, height, width, 3]` -> `[batch, num_classes]`."""
    x = self.tokens(video)
    batch, time, height, width, hidden = x.shape
    block = {'spatio_temporal': 'standard'}.get(self.variant, self.variant)
    x = self.encode(x.reshape(batch, time * height * width, hidden), 'Transformer', train,
                    block=block, temporal_dims=time, attention_order=self.attention_order)
    return self.head(x)


class FactorisedEncoderViViT(VideoTransformer):
  """Model 2: a spatial ViT per time step, then a temporal ViT over their outputs.

  The spatial encoder (and its CLS token) is shared by all time steps.
  """
  temporal_num_layers: int = 4
  temporal_num_heads: int = 12
  temporal_mlp_dim: int = 3072

  @nn.compact
  def __call__(self, video, *, train: bool = False):
    """`[batch, time, height, width, 3]` -> `[batch, num_classes]`."""
    x = self.tokens(video)
    batch, time, height, width, hidden = x.shape
    x = self.encode(x.reshape(batch, time, height * width, hidden), 'SpatialTransformer',
                    train, per_frame=True)
    x = self.encode(x, 'TemporalTransformer', train,
                    num_layers=self.temporal_num_layers, num_heads=self.temporal_num_heads,
                    mlp_dim=self.temporal_mlp_dim)
    return self.head(x)


def validate_model_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming the offending field for configs no model can build."""
  def choice(field, options):
    if config[field] not in options:
      raise ValueError(f'unknown model.{field} {config[field]!r}; '
                       f'expected one of {", ".join(options)}')
  choice('variant', VARIANTS)
  choice('embedding', EMBEDDINGS)
  choice('classifier', CLASSIFIERS)
  choice('tubelet_init', TUBELET_INITS)
  choice('dtype', tuple(DTYPES))
  choice('attention', ATTENTION_IMPLEMENTATIONS)
  if config.classifier == 'token' and config.variant in (
      'factorised_self_attention', 'factorised_dot_product'):
    raise ValueError(f"model.classifier='token' is not defined for variant "
                     f"{config.variant!r} (no CLS token in models 3 and 4); "
                     f"use classifier='gap'")
  if config.variant == 'factorised_dot_product' and config.num_heads % 2:
    raise ValueError(f'factorised_dot_product splits heads between time and space '
                     f'and needs an even num_heads, got {config.num_heads}')
  if len(config.tubelet) != 3:
    raise ValueError(f'model.tubelet must be (time, height, width), '
                     f'got {tuple(config.tubelet)}')
  if config.embedding == 'frame' and not config.num_sampled_frames:
    raise ValueError('embedding=frame needs model.num_sampled_frames')
  heads = [('num_heads', config.num_heads)]
  if config.variant == 'factorised_encoder':
    heads.append(('temporal.num_heads', config.temporal.num_heads))
  for name, num_heads in heads:
    if config.hidden_size % num_heads:
      raise ValueError(f'model.hidden_size {config.hidden_size} is not divisible '
                       f'by model.{name} {num_heads}')


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The Flax module described by a model config (see `vivit.models.configs`)."""
  validate_model_config(config)
  common = dict(
      num_classes=config.num_classes, hidden_size=config.hidden_size,
      num_layers=config.num_layers, num_heads=config.num_heads,
      mlp_dim=config.mlp_dim, embedding=config.embedding,
      tubelet=tuple(config.tubelet), num_sampled_frames=config.num_sampled_frames,
      tubelet_init=config.tubelet_init, classifier=config.classifier,
      representation_size=config.representation_size,
      dropout_rate=config.dropout_rate,
      attention_dropout_rate=config.attention_dropout_rate,
      stochastic_depth=config.stochastic_depth,
      fsa_stochastic_depth=config.get('fsa_stochastic_depth', False),
      remat=config.remat, dtype=DTYPES[config.dtype],
      attention=config.get('attention', 'auto'))
  if config.variant == 'factorised_encoder':
    return FactorisedEncoderViViT(
        temporal_num_layers=config.temporal.num_layers,
        temporal_num_heads=config.temporal.num_heads,
        temporal_mlp_dim=config.temporal.mlp_dim, **common)
  return ViViT(variant=config.variant, attention_order=config.attention_order,
               **common)
