"""Transformer encoders: the pre-LayerNorm ViT block, model 3's factorised block."""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp

from vivit.models.layers import LayerNorm, MlpBlock, SelfAttention, drop_path

Dtype = Any
LN_EPS = 1e-6


class EncoderBlock(nn.Module):
  """LN -> self-attention -> residual; LN -> MLP -> residual.

  With `factorised_grid = (time, space)` the attention is model 4's: half the heads
  attend along time, half along space.
  """
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droplayer_rate: float = 0.0
  factorised_grid: Optional[Tuple[int, int]] = None
  dtype: Dtype = jnp.float32
  attention: str = 'auto'  # the implementation, see attention.attend

  @nn.compact
  def __call__(self, inputs, deterministic: bool):
    """`[batch, tokens, hidden]` -> `[batch, tokens, hidden]`."""
    x = LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name='LayerNorm_0')(inputs)
    x = SelfAttention(self.num_heads, self.attention_dropout_rate,
                      self.factorised_grid, self.dtype, self.attention,
                      name='MultiHeadDotProductAttention_0')(x, deterministic)
    x = nn.Dropout(self.dropout_rate)(x, deterministic)
    x = inputs + drop_path(self, x, self.droplayer_rate, deterministic)
    y = LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name='LayerNorm_1')(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, name='MlpBlock_0')(
        y, deterministic)
    return x + drop_path(self, y, self.droplayer_rate, deterministic)


class FactorisedSelfAttentionBlock(nn.Module):
  """Model 3: attention over time, then over space (or the reverse), then MLP.

  Tokens are time-major: `[batch, time*space, hidden]` with `time = temporal_dims`.
  """
  mlp_dim: int
  num_heads: int
  temporal_dims: int
  attention_order: str = 'time_space'
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  droplayer_rate: float = 0.0
  dtype: Dtype = jnp.float32
  attention: str = 'auto'

  @nn.compact
  def __call__(self, inputs, deterministic: bool):
    """`[batch, time*space, hidden]` -> same."""
    batch, tokens, hidden = inputs.shape
    time = self.temporal_dims
    space = tokens // time
    if self.attention_order not in ('time_space', 'space_time'):
      raise ValueError(f"attention_order must be 'time_space' or 'space_time', "
                       f'got {self.attention_order!r}')
    axes = self.attention_order.split('_')
    x = inputs.reshape(batch, time, space, hidden)
    for axis in axes:
      # Sequences along `axis`: [batch * other, length, hidden].
      seq = x.transpose(0, 2, 1, 3) if axis == 'time' else x
      seq_shape = seq.shape
      seq = seq.reshape(-1, seq_shape[2], hidden)
      y = LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name=f'LayerNorm_{axis}')(seq)
      y = SelfAttention(self.num_heads, self.attention_dropout_rate, None, self.dtype,
                        self.attention,
                        name=f'MultiHeadDotProductAttention_{axis}')(y, deterministic)
      y = nn.Dropout(self.dropout_rate)(y, deterministic)
      y = y.reshape(seq_shape)
      if axis == 'time':
        y = y.transpose(0, 2, 1, 3)
      x = x + drop_path(self, y, self.droplayer_rate, deterministic)
    x = x.reshape(batch, tokens, hidden)
    y = LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name='LayerNorm_mlp')(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, name='MlpBlock')(
        y, deterministic)
    return x + drop_path(self, y, self.droplayer_rate, deterministic)


class Encoder(nn.Module):
  """Learned 1-D position embedding, `num_layers` blocks, final LayerNorm.

  Attributes:
    block: 'standard' (models 1 and 2), 'factorised_self_attention' (model 3) or
      'factorised_dot_product' (model 4).
    temporal_dims: number of time steps in the token sequence (models 3 and 4).
    stochastic_depth: drop rate of the last block; block i uses
      `i / (num_layers - 1) * stochastic_depth`.
    fsa_stochastic_depth: whether factorised self-attention blocks (model 3) drop
      too; scenic's do not.
    remat: rematerialise each block in the backward pass.
  """
  num_layers: int
  mlp_dim: int
  num_heads: int
  block: str = 'standard'
  temporal_dims: Optional[int] = None
  attention_order: str = 'time_space'
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  stochastic_depth: float = 0.0
  fsa_stochastic_depth: bool = False
  remat: bool = False
  dtype: Dtype = jnp.float32
  attention: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool):
    """`[batch, tokens, hidden]` -> `[batch, tokens, hidden]`."""
    x = PositionEmbedding(name='posembed_input')(x)
    x = nn.Dropout(self.dropout_rate)(x, not train)
    for i in range(self.num_layers):
      rate = i / max(self.num_layers - 1, 1) * self.stochastic_depth
      x = self._block(i, rate, x.shape)(x, not train)
    return LayerNorm(epsilon=LN_EPS, dtype=self.dtype, name='encoder_norm')(x)

  def _block(self, index: int, droplayer_rate: float, shape):
    common = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                  dropout_rate=self.dropout_rate,
                  attention_dropout_rate=self.attention_dropout_rate,
                  droplayer_rate=droplayer_rate, dtype=self.dtype,
                  attention=self.attention, name=f'encoderblock_{index}')
    if self.block == 'factorised_self_attention':
      cls = FactorisedSelfAttentionBlock
      common.update(temporal_dims=self.temporal_dims,
                    attention_order=self.attention_order)
      if not self.fsa_stochastic_depth:
        common.update(droplayer_rate=0.0)
    else:
      cls = EncoderBlock
      if self.block == 'factorised_dot_product':
        common.update(factorised_grid=(self.temporal_dims,
                                       shape[1] // self.temporal_dims))
    if self.remat:
      cls = nn.remat(cls, static_argnums=(2,))
    return cls(**common)


class PositionEmbedding(nn.Module):
  """Adds a learned `[1, tokens, hidden]` embedding."""

  @nn.compact
  def __call__(self, x):
    shape = (1,) + x.shape[1:]
    if self.has_variable('params', 'pos_embedding'):
      stored = tuple(self.get_variable('params', 'pos_embedding').shape)
      if stored != shape:
        raise ValueError(
            f'the video gives {shape[1]} tokens (position embedding {shape}) but the '
            f'params were made for {stored[1]} ({stored}): feed clips of the size the '
            f'model was built for (model.input_size), or resize the params to this one '
            f'(vivit.convert.resize_params)')
    pos = self.param('pos_embedding', nn.initializers.normal(stddev=0.02), shape)
    return x + pos.astype(x.dtype)
