"""The fused CPU attention kernel (`fused_attention.cc`, built at install time).

One XLA FFI call for the forward and one for the backward: flash-attention tiling on
AVX-512 with the probabilities recomputed from the saved log-sum-exp, so the
`[heads, N, N]` matrix never exists. float32 only; `attention.attend` uses it on CPU
where `supports` says so, and otherwise its pure-JAX paths (which are also the
reference the tests compare it with).
"""
import ctypes
import functools
import hashlib
import importlib.machinery
import os
import warnings

import jax
import jaxlib
from jax.experimental.custom_partitioning import custom_partitioning
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

_LIBRARY_STEM = '_fused_attention'
_FORWARD = 'vivit_fused_attention_forward'
_BACKWARD = 'vivit_fused_attention_backward'
_NO_AVX512 = 'this CPU has no AVX-512'


def _version(text: str):
  return tuple(int(part) for part in text.split('.')[:3] if part.isdigit())


def _source_hash():
  """The sha256 of the `fused_attention.cc` beside this file, or None where it is not
  there (a wheel ships the library without it: both come from one build)."""
  path = os.path.join(os.path.dirname(__file__), 'fused_attention.cc')
  if not os.path.exists(path):
    return None
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> str:
  """Why the kernel cannot run here ('' when it can): not built, built from another
  `fused_attention.cc` than the one beside it (a `git pull` since the build) or
  against a newer jaxlib than the one running, a library that does not load, or a CPU
  without AVX-512. A library that is there but not used also warns, once. Registers
  the FFI targets on first success."""
  directory = os.path.dirname(__file__)
  paths = [os.path.join(directory, _LIBRARY_STEM + suffix)
           for suffix in importlib.machinery.EXTENSION_SUFFIXES]
  path = next((p for p in paths if os.path.exists(p)), None)
  if path is None:
    return (f'{_LIBRARY_STEM} was not built (reinstall with a C++ compiler: '
            f'pip install -e .)')
  reason = _load(path)
  if reason and reason != _NO_AVX512:  # built here, yet this process cannot use it
    warnings.warn(f'vivit: attention runs in plain JAX, not the fused kernel: {reason}',
                  stacklevel=2)
  return reason


def _load(path: str) -> str:
  """Loads the library and registers its FFI targets; else why not."""
  rebuild = 'rebuild: pip install --no-build-isolation -e .'
  try:
    library = ctypes.cdll.LoadLibrary(path)
    built_from = getattr(library, 'vivit_fused_attention_source', None)
    if built_from is not None:
      built_from.restype = ctypes.c_char_p
      built_from = built_from().decode()
    expected = _source_hash()
    if expected is not None and built_from != expected:
      return (f'{path} was built from another fused_attention.cc than the one beside '
              f'it ({rebuild})')
    library.vivit_fused_attention_jaxlib.restype = ctypes.c_char_p
    built_for = library.vivit_fused_attention_jaxlib().decode()
    if _version(built_for) > _version(jaxlib.__version__):
      return (f'{path} was built against jaxlib {built_for}, newer than the running '
              f'{jaxlib.__version__} ({rebuild})')
    if not library.vivit_fused_attention_supported():
      return _NO_AVX512
    for name, symbol in ((_FORWARD, library.VivitFusedAttentionForward),
                         (_BACKWARD, library.VivitFusedAttentionBackward)):
      jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform='cpu')
  except Exception as error:  # pylint: disable=broad-except  (any load failure)
    return f'{path} does not load ({type(error).__name__}: {error})'
  return ''


def supports(query, key, value) -> bool:
  """Whether `fused_attention` can take these `[batch, length, heads, head_dim]`
  arrays (self-attention shapes, float32, head_dim a multiple of 16 up to 128) when
  compiled for the default backend."""
  return (jax.default_backend() == 'cpu'
          and query.shape == key.shape == value.shape and query.ndim == 4
          and all(x.dtype == jnp.float32 for x in (query, key, value))
          and query.shape[-1] % 16 == 0 and 16 <= query.shape[-1] <= 128
          and not unavailable_reason())


def _scales(depth: int):
  """The forward's logit scale in base 2 and d(natural logit)/d(q.k) as it rounds."""
  scale = np.float32(np.log2(np.e) / np.sqrt(depth))
  return scale, np.float32(float(scale) / np.log2(np.e))


@jax.custom_vjp
def fused_attention(query, key, value):
  """Softmax attention, `[batch, length, heads, head_dim]` float32 in and out.
  Reverse-mode differentiable (a `custom_vjp`), not forward-mode (`jax.jvp`)."""
  return _forward(query, key, value)[0]


def _require_kernel():
  if unavailable_reason():
    raise RuntimeError(f'the fused attention kernel cannot run: {unavailable_reason()}')


def _forward_call(query, key, value):
  _require_kernel()
  batch, length, heads, depth = query.shape
  return jax.ffi.ffi_call(
      _FORWARD,
      (jax.ShapeDtypeStruct(query.shape, jnp.float32),
       jax.ShapeDtypeStruct((batch, heads, length), jnp.float32)),
      vmap_method='sequential',
  )(query, key, value, scale=_scales(depth)[0])


def _backward_call(query, key, value, out, log2_sum_exp, grad_out):
  _require_kernel()
  scale, grad_scale = _scales(query.shape[-1])
  shape = jax.ShapeDtypeStruct(query.shape, jnp.float32)
  return jax.ffi.ffi_call(_BACKWARD, (shape, shape, shape), vmap_method='sequential')(
      query, key, value, out, log2_sum_exp, grad_out, scale=scale, grad_scale=grad_scale)


def _batch_and_heads(mesh, query_sharding):
  """Shardings that keep the query's batch and head axes and replicate the rest: each
  device runs the kernel on its own examples and heads, no gathering."""
  spec = tuple(getattr(query_sharding, 'spec', ())) + (None,) * 4
  batch, heads = spec[0], spec[2]
  rows = NamedSharding(mesh, PartitionSpec(batch, None, heads, None))
  statistics = NamedSharding(mesh, PartitionSpec(batch, heads, None))
  return rows, statistics


def _partitioned(call, rule, outputs):
  """`call` under `custom_partitioning`: without it XLA's partitioner gathers every
  operand of the opaque FFI call onto each device."""
  wrapped = custom_partitioning(call)

  def infer(mesh, arg_shapes, result_shape):
    rows, statistics = _batch_and_heads(mesh, arg_shapes[0].sharding)
    return tuple(rows if kind == 'rows' else statistics for kind in outputs)

  def partition(mesh, arg_shapes, result_shape):
    rows, statistics = _batch_and_heads(mesh, arg_shapes[0].sharding)
    arguments = tuple(statistics if len(a.shape) == 3 else rows for a in arg_shapes)
    return mesh, call, infer(mesh, arg_shapes, result_shape), arguments

  wrapped.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule,
                        need_replication_factors=('n', 'd'))
  return wrapped


def _vmap_into_batch(call):
  """`call` with a `jax.vmap` rule that folds the mapped axis into the batch axis
  (every operand's leading one): one kernel call, not one per mapped element."""
  wrapped = jax.custom_batching.custom_vmap(call)

  @wrapped.def_vmap
  def rule(axis_size, in_batched, *args):
    mapped = [x if batched else jnp.broadcast_to(x, (axis_size,) + x.shape)
              for x, batched in zip(args, in_batched)]
    folded = [x.reshape((-1,) + x.shape[2:]) for x in mapped]
    outputs = wrapped(*folded)
    outputs = tuple(y.reshape((axis_size, -1) + y.shape[1:]) for y in outputs)
    return outputs, (True,) * len(outputs)

  return wrapped


_forward_partitioned = _vmap_into_batch(_partitioned(
    _forward_call, 'b n h d, b n h d, b n h d -> b n h d, b h n', ('rows', 'statistics')))
_backward_partitioned = _vmap_into_batch(_partitioned(
    _backward_call, 'b n h d, b n h d, b n h d, b n h d, b h n, b n h d -> '
    'b n h d, b n h d, b n h d', ('rows', 'rows', 'rows')))


def _forward(query, key, value):
  out, log2_sum_exp = _forward_partitioned(query, key, value)
  return out, (query, key, value, out, log2_sum_exp)


def _backward(residuals, grad_out):
  return tuple(_backward_partitioned(*residuals, grad_out))


fused_attention.defvjp(_forward, _backward)
