"""Transformer encoders: the pre-LayerNorm ViT block, model 3's factorised block.

Every module here reads the model config (`config`, the `FrozenConfigDict` made by
`vivit.models.build_model`) itself; only what depends on the block's place (its drop
rate) or on the input (the number of time steps) is passed on.
"""
from typing import Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from vivit.errors import ConfigError
from vivit.models import variants
from vivit.models.layers import LayerNorm, MlpBlock, SelfAttention, drop_path

LN_EPS = 1e-6


class Block(nn.Module):
  """What every encoder block is given: the model config, its stochastic-depth rate
  and the number of time steps of its time-major tokens."""
  config: ml_collections.FrozenConfigDict
  droplayer_rate: float = 0.0
  time_steps: Optional[int] = None


class EncoderBlock(Block):
  """LN -> self-attention -> residual; LN -> MLP -> residual.

  `droplayer_rate`: stochastic depth of both residual branches.
  """

  def attention_grid(self, num_tokens: int) -> Optional[Tuple[int, int]]:
    """(time, space) along which the heads split, or None: every head sees all."""
    del num_tokens
    return None

  @nn.compact
  def __call__(self, inputs, deterministic: bool):
    """`[batch, tokens, hidden]` -> `[batch, tokens, hidden]`."""
    config, dtype = self.config, jnp.dtype(self.config.dtype)
    grid = self.attention_grid(inputs.shape[1])
    x = LayerNorm(epsilon=LN_EPS, dtype=dtype, name='LayerNorm_0')(inputs)
    x = SelfAttention(config.num_heads, config.attention_dropout_rate, grid, dtype,
                      config.attention, name='MultiHeadDotProductAttention_0')(
                          x, deterministic)
    x = nn.Dropout(config.dropout_rate)(x, deterministic)
    x = inputs + drop_path(self, x, self.droplayer_rate, deterministic)
    y = LayerNorm(epsilon=LN_EPS, dtype=dtype, name='LayerNorm_1')(x)
    y = MlpBlock(config.mlp_dim, config.dropout_rate, dtype, name='MlpBlock_0')(
        y, deterministic)
    return x + drop_path(self, y, self.droplayer_rate, deterministic)


class FactorisedHeadsBlock(EncoderBlock):
  """Model 4: the ViT block, with half the heads attending along time (tokens at the
  same spatial position), half along space (tokens of the same time step)."""

  def attention_grid(self, num_tokens: int) -> Optional[Tuple[int, int]]:
    return (self.time_steps, num_tokens // self.time_steps)


class FactorisedSelfAttentionBlock(Block):
  """Model 3: attention over time, then over space (`config.attention_order`), then
  MLP. Stochastic depth only with `config.fsa_stochastic_depth` (scenic has none).

  Tokens are time-major: `[batch, time*space, hidden]` with `time = time_steps`.
  """

  @nn.compact
  def __call__(self, inputs, deterministic: bool):
    """`[batch, time*space, hidden]` -> same."""
    config, dtype = self.config, jnp.dtype(self.config.dtype)
    rate = self.droplayer_rate if config.fsa_stochastic_depth else 0.0
    batch, tokens, hidden = inputs.shape
    time, space = self.time_steps, tokens // self.time_steps
    if config.attention_order not in ('time_space', 'space_time'):
      raise ConfigError(f"attention_order must be 'time_space' or 'space_time', "
                        f'got {config.attention_order!r}')
    x = inputs.reshape(batch, time, space, hidden)
    for axis in config.attention_order.split('_'):
      # Sequences along `axis`: [batch * other, length, hidden].
      seq = x.transpose(0, 2, 1, 3) if axis == 'time' else x
      seq_shape = seq.shape
      seq = seq.reshape(-1, seq_shape[2], hidden)
      y = LayerNorm(epsilon=LN_EPS, dtype=dtype, name=f'LayerNorm_{axis}')(seq)
      y = SelfAttention(config.num_heads, config.attention_dropout_rate, None, dtype,
                        config.attention,
                        name=f'MultiHeadDotProductAttention_{axis}')(y, deterministic)
      y = nn.Dropout(config.dropout_rate)(y, deterministic)
      y = y.reshape(seq_shape)
      if axis == 'time':
        y = y.transpose(0, 2, 1, 3)
      x = x + drop_path(self, y, rate, deterministic)
    x = x.reshape(batch, tokens, hidden)
    y = LayerNorm(epsilon=LN_EPS, dtype=dtype, name='LayerNorm_mlp')(x)
    y = MlpBlock(config.mlp_dim, config.dropout_rate, dtype, name='MlpBlock')(
        y, deterministic)
    return x + drop_path(self, y, rate, deterministic)


# The Flax module of each block kind (`vivit.models.variants.BLOCK_KINDS`).
BLOCKS = {
    variants.JOINT_BLOCK: EncoderBlock,
    variants.FACTORISED_HEADS_BLOCK: FactorisedHeadsBlock,
    variants.FACTORISED_SELF_ATTENTION_BLOCK: FactorisedSelfAttentionBlock,
}


class Encoder(nn.Module):
  """Learned 1-D position embedding, `config.num_layers` blocks of the variant's kind
  (`BLOCKS`), final LayerNorm.

  Attributes:
    config: the model config (model 2's temporal encoder: with `config.temporal`'s
      sizes). Block i drops at `i / (num_layers - 1) * config.stochastic_depth`;
      `config.remat` rematerialises each block in the backward pass.
    time_steps: number of time steps in the token sequence (models 3 and 4).
  """
  config: ml_collections.FrozenConfigDict
  time_steps: Optional[int] = None

  @nn.compact
  def __call__(self, x, train: bool):
    """`[batch, tokens, hidden]` -> `[batch, tokens, hidden]`."""
    config = self.config
    block = variants.for_block(BLOCKS, variants.get(config.variant).block, 'the encoder')
    if config.remat:
      block = nn.remat(block, static_argnums=(2,))
    x = PositionEmbedding(name='posembed_input')(x)
    x = nn.Dropout(config.dropout_rate)(x, not train)
    for i in range(config.num_layers):
      rate = i / max(config.num_layers - 1, 1) * config.stochastic_depth
      x = block(config, rate, self.time_steps, name=f'encoderblock_{i}')(x, not train)
    return LayerNorm(epsilon=LN_EPS, dtype=jnp.dtype(config.dtype), name='encoder_norm')(x)


class PositionEmbedding(nn.Module):
  """Adds a learned `[1, tokens, hidden]` embedding."""

  @nn.compact
  def __call__(self, x):
    shape = (1,) + x.shape[1:]
    if self.has_variable('params', 'pos_embedding'):
      stored = tuple(self.get_variable('params', 'pos_embedding').shape)
      if stored != shape:
        raise ConfigError(
            f'the video gives {shape[1]} tokens (position embedding {shape}) but the '
            f'params were made for {stored[1]} ({stored}): feed clips of the size the '
            f'model was built for (model.input_size), or resize the params to this one '
            f'(vivit.convert.resize_params)')
    pos = self.param('pos_embedding', nn.initializers.normal(stddev=0.02), shape)
    return x + pos.astype(x.dtype)
