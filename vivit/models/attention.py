"""Attention algorithms and their dispatch (`attend`, for `model.attention`): XLA's,
key-blocked online softmax, the fused CPU kernel (`fused_attention`), cuDNN (with the
token axis padded where jax would refuse it: `padded_attention`); and model 4's split
of the heads between time and space (`factorised_attend`).
"""
import functools
import warnings
from typing import Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from vivit.errors import ConfigError
from vivit.models import fused_attention as fused

# Attention implementations (`model.attention`): 'auto' = on CPU 'fused' where it runs
# (float32), else 'blocked' from this many tokens on (where the full [heads, N, N]
# matrix costs hundreds of MB), else 'xla'; on NVIDIA GPUs 'cudnn' where cuDNN takes
# the dtype and head dim (every token count: odd ones padded, `CUDNN_PAD_MULTIPLE`),
# else (float32 above all) 'xla' where its materialised matrices fit
# `XLA_MEMORY_FRACTION` of the device's memory (`xla_fits`), else 'blocked'; on TPU
# 'xla'. 'observed' materialises the probabilities and hands them to the caller's
# `observe` (`vivit.explain` records and differentiates them): slower, for
# explanations only.
ATTENTION_IMPLEMENTATIONS = ('auto', 'fused', 'xla', 'blocked', 'cudnn', 'observed')
BLOCKED_MIN_LENGTH = 1024
KEY_BLOCK = 128  # fastest of 32..1024 on this CPU (3137 tokens, 12 heads)
# jax (0.10) differentiates cuDNN attention over even token counts only (its check for
# a bias, seqlen divisible by 2, also counts the empty placeholder it passes for none).
# So an odd count (every CLS model: 3137, 197, 17) is padded with zeros to a multiple
# of this and cuDNN is given the true lengths (its padding mask: padded keys weigh
# nothing; padded query rows are dropped). Even counts are left as they are: cuDNN 9
# takes any length and tiles it by 64 or 128 itself, while the pad and the slice are
# copies of query, key, value and output in both passes. Padding to its tile would add
# no work it skips and up to 127 tokens of copies (model 3's 16-step time attention:
# 8x); 8 rather than the next even count adds at most 6 tokens and starts each row
# cuDNN reads along the tokens (the float32 softmax statistics kept for the backward,
# [batch, heads, tokens]) on a 16-byte boundary, the width of its vector loads.
CUDNN_PAD_MULTIPLE = 8
# Where cuDNN cannot run (float32, V100s, odd head dims), XLA's materialised attention
# is the faster exact path while its [batch, heads, queries, keys] float32 matrices
# fit: the probabilities the backward keeps (one per layer, until the backward) and
# the two it makes while running (their gradient and the logits'), three in all, at
# most this fraction of the device's memory (`Accelerator.memory`); beyond it the
# key-blocked scan, which never holds them.
XLA_MEMORY_FRACTION = 1 / 32
# The memory assumed where the device does not say (`memory_stats()` missing): the
# smallest of the usual training GPUs (T4, V100 16 GB).
DEFAULT_DEVICE_MEMORY = 16 * 2**30


class Accelerator(NamedTuple):
  """What the choice of attention depends on besides the arrays (`accelerator()`
  reads it here; tests pass their own)."""
  backend: str  # jax.default_backend(): 'cpu', 'gpu' or 'tpu'
  nvidia: bool = False  # a CUDA GPU (not ROCm)
  compute_capability: Optional[Tuple[int, int]] = None
  cudnn_version: Optional[int] = None  # as cuDNN counts it: 91000 is 9.10.0
  memory: Optional[int] = None  # bytes the device may allocate (None: not said)


@functools.lru_cache(maxsize=None)
def accelerator() -> Accelerator:
  """This process's `Accelerator` (its first local device)."""
  backend = jax.default_backend()
  if backend != 'gpu':
    return Accelerator(backend)
  device = jax.local_devices()[0]
  try:
    memory = (device.memory_stats() or {}).get('bytes_limit')
  except (AttributeError, NotImplementedError, RuntimeError):
    memory = None
  if 'cuda' not in device.client.platform_version.lower():
    return Accelerator(backend, memory=memory)
  capability = tuple(int(part) for part in device.compute_capability.split('.')[:2])
  try:
    from jax._src.lib import cuda_versions  # what jax's own cuDNN attention asks
    cudnn = cuda_versions.cudnn_get_version() if cuda_versions is not None else None
  except (ImportError, AttributeError, RuntimeError):
    cudnn = None
  return Accelerator(backend, True, capability, cudnn, memory)


def cudnn_unavailable_reason(query, key, value,
                             where: Optional[Accelerator] = None) -> str:
  """Why `attend(..., implementation='cudnn')` (cuDNN flash attention) cannot take
  these `[batch, length, heads, head_dim]` arrays on `where` (default: here); '' when
  it can. The limits: compute capability 8.0 or newer (10.3 from cuDNN 9.11), float16
  or bfloat16, head dims a multiple of 8 up to 128, or 256 from compute capability 9.0
  and cuDNN 9.5. Any token count: odd ones are padded (`cudnn_padded_lengths`)."""
  where = where or accelerator()
  if not where.nvidia:
    return f'cuDNN attention needs an NVIDIA GPU (JAX runs on {where.backend})'
  if where.cudnn_version is None:
    return 'JAX finds no cuDNN'
  capability = '.'.join(map(str, where.compute_capability))
  if where.compute_capability < (8, 0):
    return (f'cuDNN flash attention needs compute capability 8.0 or newer (this GPU: '
            f'{capability})')
  if where.compute_capability == (10, 3) and where.cudnn_version < 91100:
    return (f'compute capability 10.3 needs cuDNN 9.11 or newer (have '
            f'{where.cudnn_version})')
  dtypes = {jnp.dtype(x.dtype) for x in (query, key, value)}
  if len(dtypes) > 1 or dtypes - {jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)}:
    return (f'cuDNN flash attention takes bfloat16 or float16, not '
            f'{"/".join(sorted(d.name for d in dtypes))} (model.dtype)')
  if (query.ndim != 4 or key.shape != value.shape
      or (query.shape[0], *query.shape[2:]) != (key.shape[0], *key.shape[2:])):
    return (f'cuDNN attention here needs [batch, length, heads, head_dim] arrays that '
            f'differ only in length (got {query.shape}, {key.shape}, {value.shape})')
  if 0 in query.shape or 0 in key.shape:
    return f'empty arrays ({query.shape}, {key.shape})'
  depth = query.shape[-1]
  most = 256 if where.compute_capability >= (9, 0) else 128
  if depth % 8 or depth > most:
    return (f'head_dim {depth}: cuDNN flash attention takes multiples of 8 up to {most} '
            f'on compute capability {capability}')
  if depth > 128 and where.cudnn_version < 90500:
    return f'head_dim {depth} needs cuDNN 9.5 or newer (have {where.cudnn_version})'
  return ''


def cudnn_padded_lengths(query, key) -> Tuple[int, int]:
  """The (query, key) token counts cuDNN runs for these arrays: odd ones padded to a
  multiple of `CUDNN_PAD_MULTIPLE` (jax differentiates even counts only), the rest as
  they are."""
  if query.shape[1] % 2 or key.shape[1] % 2:
    return tuple(_round_up(x.shape[1], CUDNN_PAD_MULTIPLE) for x in (query, key))
  return query.shape[1], key.shape[1]


def _round_up(length: int, multiple: int) -> int:
  return -(-length // multiple) * multiple


def _mapped_size(x) -> int:
  """How many copies of `x` the `jax.vmap`s around this call run at once (flax's
  `nn.vmap`: model 2's per-frame encoder): their axes are not in `x.shape`. 1 where
  they cannot be seen (inside a `jax.checkpoint` traced on its own)."""
  size = 1
  while isinstance(x, getattr(jax.core, 'Tracer', ())):
    if hasattr(x, 'batch_dim'):  # a vmap's tracer: the whole array is its `val`
      if isinstance(x.batch_dim, int):
        size *= x.val.shape[x.batch_dim]
      x = x.val
    elif hasattr(x, 'primal'):  # differentiation's tracers hold the value inside
      x = x.primal
    else:
      break
  return size


def xla_matrix_bytes(query, key) -> int:
  """Bytes of the float32 `[batch, heads, queries, keys]` matrices that XLA's
  attention holds at once in a training step (three: the probabilities the backward
  keeps, their gradient and the logits'), counting the examples of enclosing vmaps."""
  batch, queries, heads, _ = query.shape
  return 3 * 4 * _mapped_size(query) * batch * heads * queries * key.shape[1]


def xla_fits(query, key, where: Optional[Accelerator] = None) -> bool:
  """Whether XLA's materialised attention keeps within `XLA_MEMORY_FRACTION` of the
  memory of `where` (default: here; `DEFAULT_DEVICE_MEMORY` where it does not say)."""
  memory = (where or accelerator()).memory or DEFAULT_DEVICE_MEMORY
  return xla_matrix_bytes(query, key) <= XLA_MEMORY_FRACTION * memory


def auto_implementation(query, key, value, where: Optional[Accelerator] = None) -> str:
  """What `implementation='auto'` runs for these arrays on `where` (default: here):
  one of 'fused', 'xla', 'blocked', 'cudnn' (also where the tokens are padded for it:
  `describe_auto_implementation` says so)."""
  where = where or accelerator()
  if where.backend == 'tpu':
    # XLA:TPU fuses the plain softmax attention around its matrix-unit dots, which is
    # the fastest of these there; the blocked scan only serialises it.
    return 'xla'
  if where.backend == 'gpu':
    if not cudnn_unavailable_reason(query, key, value, where):
      return 'cudnn'
    return 'xla' if xla_fits(query, key, where) else 'blocked'
  if fused.supports(query, key, value):
    return 'fused'
  return 'blocked' if key.shape[1] >= BLOCKED_MIN_LENGTH else 'xla'


def describe_auto_implementation(query, key, value,
                                 where: Optional[Accelerator] = None) -> str:
  """`auto_implementation`, with cuDNN's padding where there is some: e.g. 'cudnn
  (padded 3137->3144)' (for reports; the choice itself is `auto_implementation`'s)."""
  implementation = auto_implementation(query, key, value, where)
  if implementation == 'cudnn':
    lengths = (query.shape[1], key.shape[1])
    padded = cudnn_padded_lengths(query, key)
    if padded != lengths:
      said = lambda counts: '/'.join(map(str, sorted(set(counts), key=counts.index)))
      return f'cudnn (padded {said(lengths)}->{said(padded)})'
  return implementation


@functools.lru_cache(maxsize=None)
def _warn_not_cudnn(implementation: str, reason: str) -> None:
  warnings.warn(f'vivit: attention on this GPU runs {implementation}, not in cuDNN: '
                f'{reason}')


def padded_attention(query, key, value, multiple: int, implementation: str = 'cudnn'):
  """`jax.nn.dot_product_attention(query, key, value, implementation=implementation)`
  with the token axes padded with zeros to a multiple of `multiple` and the true
  lengths given (`query_seq_lengths`, `key_value_seq_lengths`: padded keys weigh
  nothing), the padded query rows dropped: values and gradients those of the
  unpadded attention. `[batch, length, heads, head_dim]` in and out. cuDNN's path
  (`attend`), and on CPU with implementation='xla' (the tests)."""
  batch, queries = query.shape[:2]
  keys = key.shape[1]

  def padded(x, length):
    extra = _round_up(length, multiple) - length
    return jnp.pad(x, ((0, 0), (0, extra), (0, 0), (0, 0))) if extra else x

  def lengths(length):
    # Made from `query` (times 0), not a constant: under a vmap (model 2's per-frame
    # encoder) jax's cuDNN batching folds the mapped axis into the batch of the
    # arrays and of the lengths alike, so the lengths must be mapped too.
    zero = jax.lax.stop_gradient(query[:, 0, 0, 0]).astype(jnp.int32) * 0
    return zero + jnp.full((batch,), length, jnp.int32)
  out = jax.nn.dot_product_attention(
      padded(query, queries), padded(key, keys), padded(value, keys),
      query_seq_lengths=lengths(queries), key_value_seq_lengths=lengths(keys),
      implementation=implementation)
  return out[:, :queries]


def attend(query, key, value, *, dropout_rate: float = 0.0,
           dropout_rng: Optional[jax.Array] = None, implementation: str = 'auto',
           observe: Optional[Callable[[jax.Array], jax.Array]] = None):
  """Scaled dot-product attention.

  Args:
    query, key, value: `[batch, length, heads, head_dim]`.
    dropout_rate: attention-probability dropout; only applied with `dropout_rng`
      (then the probabilities are materialised, whatever `implementation`).
    dropout_rng: PRNG key, given only in training.
    implementation: 'fused' (the C++ CPU kernel of `fused_attention`: float32, head
      dims a multiple of 16 up to 128), 'xla' (`jax.nn.dot_product_attention`'s XLA
      path: the full probability matrix), 'blocked' (`blocked_attention`: key blocks
      with an online softmax, never the full matrix), 'cudnn' (cuDNN flash attention
      on NVIDIA GPUs, where `cudnn_unavailable_reason` is ''; odd token counts padded:
      `padded_attention`), 'observed' (the probabilities materialised and passed
      through `observe`) or 'auto' (`auto_implementation`: on CPU 'fused' where
      `fused.supports` the arrays, else 'blocked' for `BLOCKED_MIN_LENGTH` tokens or
      more, else 'xla'; on NVIDIA GPUs 'cudnn' where it runs, else 'xla' where
      `xla_fits`, else 'blocked', with a warning naming why not cuDNN; on TPU 'xla').
    observe: for 'observed': a function of the probabilities `[batch, heads, queries,
      keys]` returning what weighs the values (`vivit.explain` returns them
      recorded and perturbed).

  Returns:
    `[batch, length, heads, head_dim]`.
  """
  if implementation == 'observed' or (dropout_rng is not None and dropout_rate > 0.0):
    depth = query.shape[-1]
    logits = jnp.einsum('bqhd,bkhd->bhqk', query, key) / jnp.sqrt(depth).astype(query.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(query.dtype)
    if implementation == 'observed' and observe is not None:
      weights = observe(weights)
    if dropout_rng is not None and dropout_rate > 0.0:
      keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, weights.shape)
      weights = jnp.where(keep, weights / (1.0 - dropout_rate), 0).astype(query.dtype)
    return jnp.einsum('bhqk,bkhd->bqhd', weights, value)
  if implementation not in ATTENTION_IMPLEMENTATIONS:
    raise ConfigError(f'unknown attention implementation {implementation!r}; expected '
                     f'one of {", ".join(ATTENTION_IMPLEMENTATIONS)}')
  if implementation == 'auto':
    implementation = auto_implementation(query, key, value)
    if accelerator().backend == 'gpu' and implementation != 'cudnn':
      _warn_not_cudnn(implementation, cudnn_unavailable_reason(query, key, value))
  if implementation == 'fused':
    if not fused.supports(query, key, value):
      raise ConfigError(
          'attention implementation \'fused\' needs the CPU backend, float32 query, '
          'key and value of one shape and a head_dim that is a multiple of 16 up to 128 '
          f'(got {jax.default_backend()}, {query.dtype}, shapes {query.shape}, '
          f'{key.shape}, {value.shape}) and the built kernel'
          + (f': {fused.unavailable_reason()}' if fused.unavailable_reason() else ''))
    return fused.fused_attention(query, key, value)
  if implementation == 'blocked':
    heads_first = lambda x: x.transpose(0, 2, 1, 3)
    out = blocked_attention(*map(heads_first, (query, key, value)), KEY_BLOCK)
    return heads_first(out)
  if implementation == 'cudnn':
    reason = cudnn_unavailable_reason(query, key, value)
    if reason:
      raise ConfigError(f"attention implementation 'cudnn' cannot run here: {reason}")
    if cudnn_padded_lengths(query, key) != (query.shape[1], key.shape[1]):
      return padded_attention(query, key, value, CUDNN_PAD_MULTIPLE, 'cudnn')
  return jax.nn.dot_product_attention(query, key, value, implementation=implementation)


def _key_blocks(x, block: int):
  """`[b, h, n, d]` -> (`[n // block, b, h, block, d]`, the `[b, h, n % block, d]`
  remainder or None): whole blocks for a scan and the rest as one smaller step, so
  that no key is padding and nothing needs a mask."""
  batch, heads, length, depth = x.shape
  count = length // block
  whole = x[:, :, :count * block].reshape(batch, heads, count, block, depth)
  rest = x[:, :, count * block:] if length % block else None
  return whole.transpose(2, 0, 1, 3, 4), rest


def _over_key_blocks(step, carry, key, value, block: int):
  """`step(carry, (key_block, value_block)) -> (carry, outputs)` over the key blocks:
  a scan over the whole ones, then the remainder; outputs concatenated along keys
  (their axis -1)."""
  (key_whole, key_rest), (value_whole, value_rest) = (_key_blocks(key, block),
                                                      _key_blocks(value, block))
  parts = []
  if key_whole.shape[0]:
    carry, outputs = jax.lax.scan(step, carry, (key_whole, value_whole))
    # [blocks, b, h, ..., block] -> [b, h, ..., blocks * block]
    parts.append(jax.tree_util.tree_map(
        lambda y: jnp.moveaxis(y, 0, -2).reshape(y.shape[1:-1] + (-1,)), outputs))
  if key_rest is not None:
    carry, outputs = step(carry, (key_rest, value_rest))
    parts.append(outputs)
  return carry, jax.tree_util.tree_map(lambda *y: jnp.concatenate(y, axis=-1), *parts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def blocked_attention(query, key, value, block: int = KEY_BLOCK):
  """Softmax attention over `block`-sized chunks of the keys with a running
  (online) softmax: memory `O(length * block)` instead of `O(length^2)`, forward
  and backward (the backward recomputes each chunk's probabilities from the saved
  log-sum-exp, as flash attention does). `[batch, heads, length, head_dim]` in and
  out; any length. Logits are kept in base 2 (`exp2` is the cheaper instruction)."""
  return _blocked_forward(query, key, value, block)[0]


def _base2_scaled(query):
  """`query * log2(e) / sqrt(head_dim)`: its dot with a key is the logit in base 2."""
  return query * np.asarray(np.log2(np.e) / np.sqrt(query.shape[-1]), query.dtype)


def _blocked_forward(query, key, value, block):
  batch, heads, length, depth = query.shape
  f32 = jnp.float32
  scaled = _base2_scaled(query)

  def step(carry, chunk):
    total, running_max, normaliser = carry
    key_block, value_block = chunk
    logits = jnp.einsum('bhqd,bhkd->bhqk', scaled, key_block, preferred_element_type=f32)
    new_max = jnp.maximum(running_max, logits.max(-1))
    # While a row has seen only -inf logits, shift by 0: -inf - -inf would be NaN.
    shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)
    probabilities = jnp.exp2(logits - shift[..., None])
    rescale = jnp.exp2(running_max - shift)
    normaliser = normaliser * rescale + probabilities.sum(-1)
    total = total * rescale[..., None] + jnp.einsum(
        'bhqk,bhkd->bhqd', probabilities.astype(value.dtype), value_block,
        preferred_element_type=f32)
    return (total, new_max, normaliser), ()
  init = (jnp.zeros((batch, heads, length, depth), f32),
          jnp.full((batch, heads, length), -jnp.inf, f32),
          jnp.zeros((batch, heads, length), f32))
  (total, running_max, normaliser), _ = _over_key_blocks(step, init, key, value, block)
  out = (total / normaliser[..., None]).astype(query.dtype)
  return out, (query, key, value, out, running_max + jnp.log2(normaliser))


def _blocked_backward(block, residuals, grad_out):
  query, key, value, out, log2_sum_exp = residuals
  batch, heads, length, depth = query.shape
  f32 = jnp.float32
  scaled = _base2_scaled(query)
  # d softmax: dlogits = p * (dp - sum(dout * out)). (An einsum: XLA:CPU's fusion of
  # the same product and sum is ~50x slower at these shapes.)
  out_dot = jnp.einsum('bhqd,bhqd->bhq', grad_out, out, preferred_element_type=f32)

  def step(grad_query, chunk):
    key_block, value_block = chunk
    logits = jnp.einsum('bhqd,bhkd->bhqk', scaled, key_block, preferred_element_type=f32)
    probabilities = jnp.exp2(logits - log2_sum_exp[..., None])
    # Key gradients come out as [head_dim, keys]: XLA:CPU's dot is ~1.6x faster so.
    grad_value = jnp.einsum('bhqd,bhqk->bhdk', grad_out,
                            probabilities.astype(grad_out.dtype),
                            preferred_element_type=f32)
    grad_probabilities = jnp.einsum('bhqd,bhkd->bhqk', grad_out, value_block,
                                    preferred_element_type=f32)
    grad_logits = (probabilities * (grad_probabilities - out_dot[..., None])).astype(
        query.dtype)
    grad_query = grad_query + jnp.einsum('bhqk,bhkd->bhqd', grad_logits, key_block,
                                         preferred_element_type=f32)
    grad_key = jnp.einsum('bhqd,bhqk->bhdk', query, grad_logits,
                          preferred_element_type=f32)
    return grad_query, (grad_key, grad_value)
  grad_query, (grad_key, grad_value) = _over_key_blocks(
      step, jnp.zeros((batch, heads, length, depth), f32), key, value, block)
  # d(natural logit)/d(q.k): the forward's base-2 scale as rounded to the input dtype.
  scale = float(np.asarray(np.log2(np.e) / np.sqrt(depth), query.dtype)) / np.log2(np.e)
  return ((grad_query * scale).astype(query.dtype),
          (jnp.swapaxes(grad_key, -1, -2) * scale).astype(key.dtype),
          jnp.swapaxes(grad_value, -1, -2).astype(value.dtype))


blocked_attention.defvjp(_blocked_forward, _blocked_backward)


def factorised_attend(query, key, value, grid: Tuple[int, int], *,
                      dropout_rate: float = 0.0, dropout_rng: Optional[jax.Array] = None,
                      implementation: str = 'auto',
                      observe: Optional[Callable[[jax.Array, str], jax.Array]] = None):
  """Model 4: first half of the heads attends over time, second half over space.

  Args:
    query, key, value: `[batch, time*space, heads, head_dim]`, time-major tokens.
    grid: `(time, space)` token counts.
    dropout_rate, dropout_rng, implementation: as `attend`'s.
    observe: as `attend`'s, also given the half's name: 'time' (probabilities
      `[batch*space, heads/2, time, time]`) or 'space' (`[batch*time, heads/2, space,
      space]`).

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

  # (query, key, value) of the first and of the second half of the heads.
  first, second = zip(*(jnp.split(x, 2, axis=2) for x in (query, key, value)))
  rngs = [None, None] if dropout_rng is None else list(jax.random.split(dropout_rng))
  options = dict(dropout_rate=dropout_rate, implementation=implementation)
  observe_half = lambda part: observe and functools.partial(observe, part=part)
  out_t = attend(*map(over_time, first), dropout_rng=rngs[0],
                 observe=observe_half('time'), **options)
  out_s = attend(*map(over_space, second), dropout_rng=rngs[1],
                 observe=observe_half('space'), **options)
  out_t = out_t.reshape(batch, space, time, half, depth).transpose(0, 2, 1, 3, 4)
  return jnp.concatenate([out_t.reshape(batch, time * space, half, depth),
                          out_s.reshape(batch, time * space, half, depth)], axis=2)
