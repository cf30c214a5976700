"""Building blocks shared by every ViViT variant: attention, MLP, stochastic depth.

Parameter layouts follow flax's `nn.MultiHeadDotProductAttention` (and therefore
scenic): `query/key/value` kernels `[hidden, heads, head_dim]`, `out` kernel
`[heads, head_dim, hidden]`.
"""
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def attend(query, key, value, *, dropout_rate: float = 0.0,
           dropout_rng: Optional[jax.Array] = None):
  """Scaled dot-product attention.

  Args:
    query, key, value: `[batch, length, heads, head_dim]`.
    dropout_rate: attention-probability dropout; only applied with `dropout_rng`.
    dropout_rng: PRNG key, given only in training.

  Returns:
    `[batch, length, heads, head_dim]`.
  """
  if dropout_rng is None or dropout_rate == 0.0:
    # Fused path: cuDNN flash attention on GPU, XLA elsewhere.
    return jax.nn.dot_product_attention(query, key, value)
  depth = query.shape[-1]
  logits = jnp.einsum('bqhd,bkhd->bhqk', query, key) / jnp.sqrt(depth).astype(query.dtype)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(query.dtype)
  keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
  weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0).astype(query.dtype)
  return jnp.einsum('bhqk,bkhd->bqhd', weights, value)


def factorised_attend(query, key, value, grid: Tuple[int, int], **kwargs):
  """Model 4: first half of the heads attends over time, second half over space.

  Args:
    query, key, value: `[batch, time*space, heads, head_dim]`, time-major tokens.
    grid: `(time, space)` token counts.
    **kwargs: passed to `attend` (dropout).

  Returns:
    `[batch, time*space, heads, head_dim]`, heads in their original order.
  """
  batch, _, heads, depth = query.shape
  time, space = grid
  half = heads // 2

  def over_time(x):  # [b, t*s, h/2, d] -> [b*s, t, h/2, d]
    x = x.reshape(batch, time, space, half, depth).transpose(0, 2, 1, 3, 4)
    return x.reshape(batch * space, time, half, depth)

  def over_space(x):  # [b, t*s, h/2, d] -> [b*t, s, h/2, d]
    return x.reshape(batch * time, space, half, depth)

  q_t, q_s = jnp.split(query, 2, axis=2)
  k_t, k_s = jnp.split(key, 2, axis=2)
  v_t, v_s = jnp.split(value, 2, axis=2)
  rngs = [None, None]
  if kwargs.get('dropout_rng') is not None:
    rngs = list(jax.random.split(kwargs['dropout_rng']))
  rate = kwargs.get('dropout_rate', 0.0)
  out_t = attend(over_time(q_t), over_time(k_t), over_time(v_t),
                 dropout_rate=rate, dropout_rng=rngs[0])
  out_t = out_t.reshape(batch, space, time, half, depth).transpose(0, 2, 1, 3, 4)
  out_s = attend(over_space(q_s), over_space(k_s), over_space(v_s),
                 dropout_rate=rate, dropout_rng=rngs[1])
  out_t = out_t.reshape(batch, time * space, half, depth)
  out_s = out_s.reshape(batch, time * space, half, depth)
  return jnp.concatenate([out_t, out_s], axis=2)


class SelfAttention(nn.Module):
  """Multi-head self-attention with flax's parameter layout.

  Attributes:
    num_heads: number of heads; must divide the hidden size.
    dropout_rate: attention-probability dropout.
    factorised_grid: `(time, space)` for model 4's head-factorised attention,
      None for full attention over the sequence.
  """
  num_heads: int
  dropout_rate: float = 0.0
  factorised_grid: Optional[Tuple[int, int]] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool):
    """`[batch, length, hidden]` -> `[batch, length, hidden]`."""
    hidden = x.shape[-1]
    if hidden % self.num_heads:
      raise ValueError(
          f'hidden size {hidden} is not divisible by num_heads {self.num_heads}')
    head_dim = hidden // self.num_heads
    dense = lambda name: nn.DenseGeneral(
        (self.num_heads, head_dim), axis=-1, dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(), name=name)
    query, key, value = dense('query')(x), dense('key')(x), dense('value')(x)
    dropout_rng = None
    if not deterministic and self.dropout_rate > 0:
      dropout_rng = self.make_rng('dropout')
    kwargs = dict(dropout_rate=self.dropout_rate, dropout_rng=dropout_rng)
    if self.factorised_grid is None:
      out = attend(query, key, value, **kwargs)
    else:
      out = factorised_attend(query, key, value, self.factorised_grid, **kwargs)
    return nn.DenseGeneral(
        hidden, axis=(-2, -1), dtype=self.dtype,
        kernel_init=nn.initializers.xavier_uniform(), name='out')(out)


class MlpBlock(nn.Module):
  """Dense -> GELU (tanh approximation) -> dropout -> Dense -> dropout."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool):
    """`[..., hidden]` -> `[..., hidden]`."""
    dense = lambda features: nn.Dense(
        features, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
        bias_init=nn.initializers.normal(stddev=1e-6))
    y = nn.gelu(dense(self.mlp_dim)(x), approximate=True)
    y = nn.Dropout(self.dropout_rate)(y, deterministic)
    y = dense(x.shape[-1])(y)
    return nn.Dropout(self.dropout_rate)(y, deterministic)


def drop_path(module: nn.Module, x, rate: float, deterministic: bool):
  """Stochastic depth: zeroes the residual branch `x` per example with prob `rate`.

  Kept branches are not rescaled by 1/(1-rate): scenic's convention, under which
  the released checkpoints were trained.
  """
  if deterministic or rate == 0.0:
    return x
  shape = (x.shape[0],) + (1,) * (x.ndim - 1)
  drop = jax.random.bernoulli(module.make_rng('dropout'), rate, shape)
  return jnp.where(drop, 0, x).astype(x.dtype)
