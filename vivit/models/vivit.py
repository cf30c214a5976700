"""ViViT models (Arnab et al., 2021): tokenisers, the four variants, heads.

Every model maps a video `[batch, time, height, width, 3]` (uint8 pixels, or floats in
[-1, 1]) to logits `[batch, num_classes]` (float32, whatever the compute dtype).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vivit.errors import ConfigError
from vivit.models import variants
from vivit.models.attention import ATTENTION_IMPLEMENTATIONS
from vivit.models.encoder import Encoder

EMBEDDINGS = ('tubelet', 'frame')
# CLS token, or global average / max / sum pooling of all tokens (scenic's names).
CLASSIFIERS = ('token', 'gap', 'gmp', 'gsp')
TUBELET_INITS = ('central_frame', 'average_frame', 'lecun_normal')
DTYPES = ('float32', 'bfloat16')  # model.dtype: the compute dtype


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
    raise ConfigError(f'scenic samples {len(indices)} frames, not num_sampled_frames='
                      f'{num_sampled}, from a {num_frames}-frame clip; choose another '
                      f'frame count')
  return indices


def embedded_frames(config: ml_collections.ConfigDict, num_frames: int):
  """The frames of a `num_frames` clip that the tokeniser embeds: all for tubelets,
  the `num_sampled_frames` sampled uniformly for frame embedding."""
  if config.embedding == 'frame':
    return sampled_frame_indices(num_frames, config.num_sampled_frames)
  return list(range(num_frames))


def token_grid(config: ml_collections.ConfigDict, clip_shape=None):
  """(t', h', w'): tokens along time, height and width of a `(time, height, width)`
  clip (default `config.input_size`)."""
  time, height, width = config.input_size if clip_shape is None else clip_shape
  patch_t, patch_h, patch_w = config.tubelet
  slots = config.num_sampled_frames if config.embedding == 'frame' else time // patch_t
  return slots, height // patch_h, width // patch_w


def tokenise(video, config: ml_collections.ConfigDict):
  """Video `[batch, time, height, width, 3]` -> tokens `[batch, t', h', w', hidden]`.

  Call from a compact method: it creates the parent's `embedding` conv.
  `tubelet`: a 3-D conv with kernel = stride = `config.tubelet` `(t, h, w)`.
  `frame`: `config.num_sampled_frames` frames sampled uniformly, each cut into
  `(h, w)` patches by a 2-D conv (the time entry of `tubelet` is not used).
  """
  batch, time, height, width, channels = video.shape
  hidden, dtype = config.hidden_size, jnp.dtype(config.dtype)
  t, h, w = config.tubelet
  if config.embedding == 'frame':
    t = 1
  for name, size, patch in (('frame count', time, t), ('height', height, h),
                            ('width', width, w)):
    if size % patch:
      raise ConfigError(f'video {name} {size} is not divisible by the tubelet '
                        f'size {patch} (video shape {tuple(video.shape)}, '
                        f'tubelet {tuple(config.tubelet)})')
  if config.embedding == 'tubelet':
    return nn.Conv(hidden, (t, h, w), strides=(t, h, w), padding='VALID',
                   kernel_init=_tubelet_init(config.tubelet_init), dtype=dtype,
                   name='embedding')(video)
  num = config.num_sampled_frames
  if not num or num > time:
    raise ConfigError(f'frame embedding samples num_sampled_frames={num} frames; '
                      f'it must be between 1 and the clip length {time}')
  video = video[:, np.asarray(embedded_frames(config, time))]
  # Frames stacked along height: one 2-D conv embeds every frame (scenic's layout).
  x = nn.Conv(hidden, (h, w), strides=(h, w), padding='VALID', dtype=dtype,
              name='embedding')(video.reshape(batch, num * height, width, channels))
  return x.reshape(batch, num, height // h, width // w, hidden)


def _pool(x, classifier: str):
  """`[..., tokens, hidden]` -> `[..., hidden]`: the CLS token, or the mean, max or
  sum of all tokens."""
  if classifier == 'token':
    return x[..., 0, :]
  return {'gap': jnp.mean, 'gmp': jnp.max, 'gsp': jnp.sum}[classifier](x, axis=-2)


def classify(x, config: ml_collections.ConfigDict):
  """Optional `pre_logits` (Dense + tanh, `config.representation_size`), then the
  zero-initialised `output_projection`: `[batch, hidden]` -> `[batch, num_classes]`.

  Call from a compact method. `num_classes=0` returns the representation itself.
  """
  x = x.astype(jnp.float32)
  if config.representation_size is not None:
    x = jnp.tanh(nn.Dense(config.representation_size, name='pre_logits')(x))
  if not config.num_classes:
    return x
  return nn.Dense(config.num_classes, kernel_init=nn.initializers.zeros,
                  name='output_projection')(x)


def check_video(video) -> None:
  """ConfigError naming what is wrong with a model input that is not
  `[batch, time, height, width, 3]` uint8 pixels or floats."""
  shape = tuple(video.shape)
  if len(shape) != 5:
    raise ConfigError(f'video must be [batch, time, height, width, 3], got shape {shape}')
  if shape[-1] != 3:
    raise ConfigError(f'video must have 3 (RGB) channels, got {shape[-1]} channels '
                      f'(shape {shape})')
  if not (video.dtype == jnp.uint8 or jnp.issubdtype(video.dtype, jnp.floating)):
    raise ConfigError(f'video dtype {jnp.dtype(video.dtype).name} is neither uint8 '
                      f'pixels nor floats in [-1, 1]')


def pixels_to_unit_range(video, dtype=jnp.float32):
  """uint8 pixels -> `dtype` in [-1, 1] (scenic's input range); floats are taken to
  be in that range already and only cast. Batches cross to the device as uint8 (a
  quarter of float32's bytes) and are converted here, on the device."""
  if video.dtype == jnp.uint8:
    return (video.astype(jnp.float32) / 127.5 - 1.0).astype(dtype)
  return jnp.asarray(video, dtype)


class VideoTransformer(nn.Module):
  """What every variant shares. `config`: the model config (`vivit.models.configs`),
  frozen (`ml_collections.FrozenConfigDict`, hashable) by `build_model`; the modules
  below read their fields from it."""
  config: ml_collections.FrozenConfigDict

  def encode(self, x, name: str, train: bool, per_frame: bool = False, config=None,
             time_steps=None):
    """Optional CLS token, then an `Encoder` of `config` (default: the model's):
    `[n, tokens, hidden]` -> pooled `[n, hidden]`. `per_frame`: `[n, time, tokens,
    hidden]` -> `[n, time, hidden]`, one encoder mapped over time that shares its
    random numbers across the frames of a clip (scenic's `jax.vmap`: a clip's frames
    drop the same layers and units). Call from a compact method."""
    if self.config.classifier == 'token':
      suffix = '' if name == 'Transformer' else f'_{name}'
      cls = self.param(f'cls{suffix}', nn.initializers.zeros, (1, 1, x.shape[-1]))
      cls = jnp.broadcast_to(cls, x.shape[:-2] + (1, x.shape[-1])).astype(x.dtype)
      x = jnp.concatenate([cls, x], axis=-2)
    encoder = Encoder
    if per_frame:
      # What 'observed' attention records is per frame: stacked along time (axis 1).
      encoder = nn.vmap(Encoder, in_axes=(1, None), out_axes=1,
                        variable_axes={'params': None, 'intermediates': 1,
                                       'perturbations': 1},
                        split_rngs={'params': False, 'dropout': False})
    x = encoder(self.config if config is None else config, time_steps, name=name)(
        x, train)
    return _pool(x, self.config.classifier)

  def tokens(self, video):
    """`[batch, time, height, width, 3]` (uint8 pixels or floats in [-1, 1]) ->
    `[batch, t', h', w', hidden]`."""
    check_video(video)
    return tokenise(pixels_to_unit_range(video, jnp.dtype(self.config.dtype)), self.config)


class ViViT(VideoTransformer):
  """Models 1, 3 and 4: one encoder over all space-time tokens, its blocks of the
  variant's kind (joint attention; time attention, space attention, MLP; half the
  heads over time, half over space)."""

  @nn.compact
  def __call__(self, video, *, train: bool = False):
    """`[batch, time, height, width, 3]` -> `[batch, num_classes]`."""
    x = self.tokens(video)
    batch, time, height, width, hidden = x.shape
    x = self.encode(x.reshape(batch, time * height * width, hidden), 'Transformer', train,
                    time_steps=time)
    return classify(x, self.config)


class FactorisedEncoderViViT(VideoTransformer):
  """Model 2: a spatial ViT per time step, then a temporal ViT over their outputs
  (`config.temporal` replaces the sizes it names).

  The spatial encoder (and its CLS token) is shared by all time steps.
  """

  @nn.compact
  def __call__(self, video, *, train: bool = False):
    """`[batch, time, height, width, 3]` -> `[batch, num_classes]`."""
    x = self.tokens(video)
    batch, time, height, width, hidden = x.shape
    x = self.encode(x.reshape(batch, time, height * width, hidden), 'SpatialTransformer',
                    train, per_frame=True)
    temporal = self.config.as_configdict()
    temporal.update(self.config.temporal)
    x = self.encode(x, 'TemporalTransformer', train,
                    config=ml_collections.FrozenConfigDict(temporal))
    return classify(x, self.config)


def validate_model_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the offending field for configs no model can build."""
  for field, options in (('variant', variants.NAMES), ('embedding', EMBEDDINGS),
                         ('classifier', CLASSIFIERS), ('tubelet_init', TUBELET_INITS),
                         ('dtype', DTYPES), ('attention', ATTENTION_IMPLEMENTATIONS)):
    if config[field] not in options:
      raise ConfigError(f'unknown model.{field} {config[field]!r}; '
                        f'expected one of {", ".join(options)}')
  variant = variants.get(config.variant)
  if config.classifier == 'token' and not variant.has_cls:
    without = ' and '.join(str(v.paper_model) for v in variants.VARIANTS if not v.has_cls)
    raise ConfigError(f"model.classifier='token' is not defined for variant "
                      f"{config.variant!r} (no CLS token in models {without}); "
                      f"use classifier='gap'")
  if variant.block == variants.FACTORISED_HEADS_BLOCK and config.num_heads % 2:
    raise ConfigError(f'{config.variant} splits heads between time and space '
                      f'and needs an even num_heads, got {config.num_heads}')
  if len(config.tubelet) != 3:
    raise ConfigError(f'model.tubelet must be (time, height, width), '
                      f'got {tuple(config.tubelet)}')
  if config.embedding == 'frame' and not config.num_sampled_frames:
    raise ConfigError('embedding=frame needs model.num_sampled_frames')
  heads = [('num_heads', config.num_heads)]
  if variant.per_frame:
    heads.append(('temporal.num_heads', config.temporal.num_heads))
  for name, num_heads in heads:
    if config.hidden_size % num_heads:
      raise ConfigError(f'model.hidden_size {config.hidden_size} is not divisible '
                        f'by model.{name} {num_heads}')


def build_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The Flax module described by a model config (see `vivit.models.configs`): model
  2's per-frame encoders or the others' one encoder, given the config frozen."""
  validate_model_config(config)
  module = FactorisedEncoderViViT if variants.get(config.variant).per_frame else ViViT
  return module(ml_collections.FrozenConfigDict(config))
