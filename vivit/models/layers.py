"""Flax modules shared by every ViViT variant: self-attention, LayerNorm, MLP, and
stochastic depth (the algorithms of attention are in `vivit.models.attention`).

Parameter layouts follow flax's `nn.MultiHeadDotProductAttention` (and therefore
scenic): `query/key/value` kernels `[hidden, heads, head_dim]`, `out` kernel
`[heads, head_dim, hidden]`.
"""
import functools
from typing import Any, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from vivit.errors import ConfigError
from vivit.models.attention import attend, factorised_attend

Dtype = Any


class SelfAttention(nn.Module):
  """Multi-head self-attention with flax's parameter layout.

  Attributes:
    num_heads: number of heads; must divide the hidden size.
    dropout_rate: attention-probability dropout.
    factorised_grid: `(time, space)` for model 4's head-factorised attention,
      None for full attention over the sequence.
    implementation: see `vivit.models.attention.attend`; 'observed' exposes the
      attention probabilities (`observe`).
  """
  num_heads: int
  dropout_rate: float = 0.0
  factorised_grid: Optional[Tuple[int, int]] = None
  dtype: Dtype = jnp.float32
  implementation: str = 'auto'

  @nn.compact
  def __call__(self, x, deterministic: bool):
    """`[batch, length, hidden]` -> `[batch, length, hidden]`."""
    hidden = x.shape[-1]
    if hidden % self.num_heads:
      raise ConfigError(
          f'hidden size {hidden} is not divisible by num_heads {self.num_heads}')
    head_dim = hidden // self.num_heads
    dense = lambda features, axis, name: nn.DenseGeneral(
        features, axis=axis, dtype=self.dtype, name=name,
        kernel_init=nn.initializers.xavier_uniform())
    query, key, value = (dense((self.num_heads, head_dim), -1, name)(x)
                         for name in ('query', 'key', 'value'))
    dropout_rng = None
    if not deterministic and self.dropout_rate > 0:
      dropout_rng = self.make_rng('dropout')
    kwargs = dict(dropout_rate=self.dropout_rate, dropout_rng=dropout_rng,
                  implementation=self.implementation)
    if self.factorised_grid is None:
      out = attend(query, key, value, observe=functools.partial(self.observe, part='all'),
                   **kwargs)
    else:
      out = factorised_attend(query, key, value, self.factorised_grid,
                              observe=self.observe, **kwargs)
    return dense(hidden, (-2, -1), 'out')(out)

  def observe(self, probabilities, part: str):
    """With `implementation='observed'`: records the probabilities `[batch, heads,
    queries, keys]` of `part` ('all'; model 4: 'time', 'space') in the 'intermediates'
    collection and adds them a zero 'perturbations' variable (so the gradient with
    respect to them can be taken: `vivit.explain`)."""
    self.sow('intermediates', part, probabilities)
    return self.perturb(part, probabilities)


class LayerNorm(nn.LayerNorm):
  """flax's LayerNorm (same parameters and numerics) applied to `[rows, features]`.

  XLA:CPU (jax 0.10, YNNPACK fusions) runs the backward pass of a LayerNorm over
  `[1, tokens, features]` ~10x slower than over the same array flattened to 2-D:
  0.9 s of a ViViT-B train step at batch 1.
  """

  def __call__(self, x, *args, **kwargs):
    rows = x.reshape(-1, x.shape[-1])
    return super().__call__(rows, *args, **kwargs).reshape(x.shape)


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
