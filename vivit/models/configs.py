"""Model configs: ViT sizes, the published ViViT models, any variant x size by name.

`get_model_config('B/16x2')` is ViViT-B/16x2 (model 1); a suffix picks the variant
(`vivit.models.variants`): `-FE` factorised encoder (model 2), `-FSA` factorised
self-attention (model 3), `-FDP` factorised dot-product (model 4). Sizes: Ti, S, B,
L, H. The patch is the spatial tubelet size, the number after `x` its temporal size.
"""
import re

import ml_collections
from ml_collections import config_dict

from vivit.errors import ConfigError
from vivit.models import variants

# hidden size, heads, layers, MLP width (ViT paper; Ti and S from DeiT).
SIZES = {
    'Ti': (192, 3, 12, 768),
    'S': (384, 6, 12, 1536),
    'B': (768, 12, 12, 3072),
    'L': (1024, 16, 24, 4096),
    'H': (1280, 16, 32, 5120),
}
# Temporal encoder depth of model 2 (scenic: B FE 12+4; L FE 24+4, K400/600 use 24+24).
FE_TEMPORAL_LAYERS = 4


def default_model_config() -> ml_collections.ConfigDict:
  """Every model field with its default (ViViT-B/16x2, model 1, 400 classes)."""
  config = ml_collections.ConfigDict()
  config.variant = variants.SPATIO_TEMPORAL
  config.embedding = 'tubelet'      # 'tubelet' (3-D conv) or 'frame' (2-D per frame)
  config.tubelet = (2, 16, 16)      # (time, height, width)
  config.num_sampled_frames = config_dict.placeholder(int)  # 'frame' embedding only
  config.tubelet_init = 'central_frame'
  config.input_size = (32, 224, 224)  # (time, height, width) the params are made for
  config.hidden_size = 768
  config.num_heads = 12
  config.num_layers = 12
  config.mlp_dim = 3072
  config.temporal = ml_collections.ConfigDict(
      dict(num_layers=FE_TEMPORAL_LAYERS, num_heads=12, mlp_dim=3072))  # model 2
  config.attention_order = 'time_space'  # model 3: 'time_space' or 'space_time'
  # Model 3: stochastic depth inside its blocks too (scenic applies none there).
  config.fsa_stochastic_depth = False
  config.classifier = 'token'        # 'token', or 'gap' / 'gmp' / 'gsp' pooling
  config.representation_size = config_dict.placeholder(int)
  config.num_classes = 400
  config.dropout_rate = 0.0
  config.attention_dropout_rate = 0.0
  config.stochastic_depth = 0.0
  config.dtype = 'float32'           # compute dtype; params stay float32
  # Attention: 'auto' (on CPU the fused C++ kernel in float32, else key-blocked online
  # softmax from 1024 tokens on, else XLA's; on NVIDIA GPUs cuDNN flash attention in
  # bfloat16/float16 where it takes the head dim, else XLA's where its matrices fit in
  # memory, else blocked; on TPU XLA's), 'fused',
  # 'xla', 'blocked', 'cudnn', or 'observed' (the probabilities materialised and
  # exposed: what `vivit.explain` builds, slow for training).
  config.attention = 'auto'
  config.remat = False
  return config


def get_model_config(name: str = 'B/16x2', **overrides) -> ml_collections.ConfigDict:
  """Model config for `SIZE/PATCHxT[-VARIANT]`, e.g. 'L/16x2-FE', 'Ti/8x2-FDP'."""
  suffixes = [variant.suffix for variant in variants.VARIANTS]
  pattern = rf'({"|".join(SIZES)})/(\d+)x(\d+)({"|".join(map(re.escape, suffixes))})'
  match = re.fullmatch(pattern, name)
  if not match:
    raise ConfigError(
        f'unknown model name {name!r}: expected SIZE/PATCHxT[-VARIANT] with SIZE in '
        f'{", ".join(SIZES)} and VARIANT in {", ".join(s[1:] for s in suffixes if s)} '
        f'(e.g. "B/16x2-FE")')
  size, patch, t, suffix = match.groups()
  hidden, heads, layers, mlp = SIZES[size]
  config = default_model_config()
  config.variant = variants.from_suffix(suffix).name
  config.tubelet = (int(t), int(patch), int(patch))
  config.hidden_size, config.num_heads = hidden, heads
  config.num_layers, config.mlp_dim = layers, mlp
  config.temporal.num_heads, config.temporal.mlp_dim = heads, mlp
  if not variants.get(config.variant).has_cls:
    config.classifier = 'gap'
  config.update(overrides)
  return config


def vivit_b_16x2() -> ml_collections.ConfigDict:
  """ViViT-B/16x2, model 1 (scenic K400: 79.9 top-1 with 4x3 views)."""
  return get_model_config('B/16x2')


def vivit_b_16x2_fe() -> ml_collections.ConfigDict:
  """ViViT-B/16x2 factorised encoder, 12 spatial + 4 temporal layers."""
  return get_model_config('B/16x2-FE')


def vivit_l_16x2_fe(temporal_layers: int = FE_TEMPORAL_LAYERS) -> ml_collections.ConfigDict:
  """ViViT-L/16x2 factorised encoder: 24 spatial layers; temporal 4 (SSv2, Epic)
  or 24 (Kinetics)."""
  config = get_model_config('L/16x2-FE')
  config.temporal.num_layers = temporal_layers
  return config
