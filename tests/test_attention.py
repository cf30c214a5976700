"""The key-blocked attention, the fused CPU kernel and cuDNN's padding against the
plain attention: values and gradients, every variant, with and without CLS, lengths
that are not a multiple of the blocks; what 'auto' picks on CPU, NVIDIA GPUs and TPUs
(device facts given), for every attention of the paper's models."""
import itertools
import os
import platform
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import default_or_slow, random_params, random_video, tiny_model_config
from vivit.models import attention, build_model, fused_attention, get_model_config

needs_fused = pytest.mark.skipif(bool(fused_attention.unavailable_reason()),
                                 reason=fused_attention.unavailable_reason() or 'available')


def plain_attention(query, key, value):
  """`[batch, heads, length, head_dim]` softmax attention, written out."""
  logits = jnp.einsum('bhqd,bhkd->bhqk', query, key) / np.sqrt(query.shape[-1])
  return jnp.einsum('bhqk,bhkd->bhqd', jax.nn.softmax(logits, -1), value)


@pytest.mark.parametrize('length,block', [(37, 16), (64, 16), (5, 16), (100, 7)])
def test_blocked_attention_values_and_gradients(length, block):
  rng = np.random.RandomState(length)
  query, key, value = (jnp.asarray(rng.normal(size=(2, 3, length, 8)) * 2, jnp.float32)
                       for _ in range(3))
  blocked = lambda q, k, v: attention.blocked_attention(q, k, v, block)
  np.testing.assert_allclose(blocked(query, key, value),
                             plain_attention(query, key, value), atol=1e-5, rtol=0)
  weights = jnp.asarray(rng.normal(size=(2, 3, length, 8)), jnp.float32)
  loss = lambda fn: lambda *qkv: jnp.sum(jnp.sin(fn(*qkv)) * weights)
  got = jax.grad(loss(blocked), argnums=(0, 1, 2))(query, key, value)
  want = jax.grad(loss(plain_attention), argnums=(0, 1, 2))(query, key, value)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


def test_blocked_attention_bfloat16():
  """bfloat16 in and out, float32 softmax statistics and accumulation inside: within
  bfloat16's resolution of float32 attention on the same (rounded) inputs."""
  rng = np.random.RandomState(0)
  query, key, value, weights = (
      jnp.asarray(rng.normal(size=(1, 2, 300, 64)), jnp.bfloat16) for _ in range(4))
  blocked = lambda q, k, v: attention.blocked_attention(q, k, v, 32)
  wide = lambda *x: [y.astype(jnp.float32) for y in x]
  out = blocked(query, key, value)
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(out.astype(jnp.float32),
                             plain_attention(*wide(query, key, value)), atol=2e-2, rtol=0)
  loss = lambda fn: lambda *qkv: jnp.sum(fn(*qkv).astype(jnp.float32) * weights)
  got = jax.grad(loss(blocked), argnums=(0, 1, 2))(query, key, value)
  want = jax.grad(loss(plain_attention), argnums=(0, 1, 2))(*wide(query, key, value))
  for g, w in zip(got, want):
    assert g.dtype == jnp.bfloat16
    error = jnp.linalg.norm(g.astype(jnp.float32) - w) / jnp.linalg.norm(w)
    assert error < 1e-2, error


def _cpu_has_avx512():
  try:
    with open('/proc/cpuinfo') as f:
      return ' avx512f ' in f.read().replace('\n', ' ')
  except OSError:
    return False


@pytest.mark.skipif(platform.machine() != 'x86_64' or not _cpu_has_avx512(),
                    reason='the fused kernel is for x86-64 CPUs with AVX-512')
def test_fused_kernel_was_built_and_loads():
  """On a CPU it is written for, `pip install -e .` must have built it."""
  assert fused_attention.unavailable_reason() == ''


@needs_fused
@pytest.mark.parametrize('length,depth', [(1, 16), (5, 64), (37, 64), (128, 16), (129, 80),
                                          (300, 64), (200, 128)])
def test_fused_attention_values_and_gradients(length, depth):
  """Lengths below, at and past the kernel's 64-query and 128-key blocks; `[batch,
  length, heads, head_dim]` (the kernel reads heads in place). Logits of standard
  deviation 2 (sharper softmaxes leave float32 itself, the plain attention included,
  ~5e-5 off a float64 reference)."""
  rng = np.random.RandomState(length + depth)
  query, key, value, weights = (
      jnp.asarray(rng.normal(size=(2, length, 3, depth)) * np.sqrt(2), jnp.float32)
      for _ in range(4))
  heads_first = lambda x: x.transpose(0, 2, 1, 3)
  plain = lambda q, k, v: heads_first(plain_attention(*map(heads_first, (q, k, v))))
  fused = jax.jit(fused_attention.fused_attention)
  np.testing.assert_allclose(fused(query, key, value), plain(query, key, value),
                             atol=1e-5, rtol=0)
  loss = lambda fn: lambda *qkv: jnp.sum(jnp.sin(fn(*qkv)) * weights)
  got = jax.jit(jax.grad(loss(fused_attention.fused_attention), argnums=(0, 1, 2)))(
      query, key, value)
  want = jax.grad(loss(plain), argnums=(0, 1, 2))(query, key, value)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


@needs_fused
def test_fused_attention_keeps_batch_and_head_sharding():
  """On 4 devices the kernel runs on each device's examples (no all-gather) and the
  gradient is the single-device one."""
  script = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from vivit.models import attention
mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ('data', 'model'))
x = np.random.RandomState(0).normal(size=(4, 70, 2, 16)).astype(np.float32)
grad = lambda impl: jax.jit(jax.grad(lambda q: jnp.sum(jnp.sin(attention.attend(
    q, q * 0.5, q, implementation=impl)))))
sharded = jax.device_put(x, NamedSharding(mesh, P('data', None, 'model')))
hlo = grad('fused').lower(sharded).compile().as_text()
assert 'all-gather' not in hlo and 'custom-call' in hlo, hlo
got = grad('fused')(sharded)
assert got.sharding.spec[0] == 'data', got.sharding
np.testing.assert_allclose(got, grad('xla')(x), atol=1e-5, rtol=1e-5)
print('ok')
"""
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4')
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0 and 'ok' in result.stdout, result.stderr[-3000:]


# Non-finite inputs, [batch, length, heads, head_dim] = (2, 150, 2, 16): three query
# blocks and two key blocks. Each case changes a few elements of random q, k, v.
def _one(operand, value):
  def change(qkv):
    qkv[operand][1, 70, 1, 3] = value
  return change


def _first_key_block_minus_inf(qkv):
  """Logits of -inf in the whole first key block, finite in the second: finite rows."""
  query, key, _ = qkv
  key[:, :128, :, 0] = -np.inf
  query[..., 0] = np.abs(query[..., 0]) + 0.1


def _row_of_minus_inf(qkv):
  """One query whose every logit is -inf: a NaN row."""
  query, key, _ = qkv
  query[0, 5, 0] = 0.0
  query[0, 5, 0, 0] = np.inf
  key[..., 0] = -np.abs(key[..., 0]) - 0.1


NON_FINITE = {f'{name}-{value}': _one(operand, value)
              for operand, name in enumerate(('query', 'key', 'value'))
              for value in (np.nan, np.inf, -np.inf)}
NON_FINITE.update({'first-key-block-minus-inf': _first_key_block_minus_inf,
                   'row-of-minus-inf': _row_of_minus_inf})
_REFERENCE = lambda q, k, v: attention.attend(q, k, v, implementation='xla')
_WEIGHTS = np.random.RandomState(1).normal(size=(2, 150, 2, 16)).astype(np.float32)
# Module level, so that every case reuses one compilation.
_IMPLEMENTATIONS = {
    'fused': fused_attention.fused_attention, 'reference': _REFERENCE,
    'blocked': lambda q, k, v: attention.attend(q, k, v, implementation='blocked')}
_VALUES = {name: jax.jit(fn) for name, fn in _IMPLEMENTATIONS.items()}
_GRADS = {name: jax.jit(jax.grad(lambda q, k, v, fn=fn: jnp.sum(fn(q, k, v) * _WEIGHTS),
                                 argnums=(0, 1, 2)))
          for name, fn in _IMPLEMENTATIONS.items()}


@pytest.mark.parametrize('implementation', [pytest.param('fused', marks=needs_fused),
                                            'blocked'])
@pytest.mark.parametrize('case', NON_FINITE)
def test_attention_non_finite_as_reference(case, implementation):
  """NaN and +-inf in the values and gradients exactly where XLA's attention has
  them (a NaN key makes its head NaN, a NaN query its row, a NaN value its column;
  -inf logits weigh 0), the rest as close as for finite inputs: the fused kernel,
  and the key-blocked attention (KEY_BLOCK 128: two blocks here)."""
  rng = np.random.RandomState(0)
  qkv = [rng.normal(size=(2, 150, 2, 16)).astype(np.float32) for _ in range(3)]
  NON_FINITE[case](qkv)
  for kind in (_VALUES, _GRADS):
    got, want = kind[implementation](*qkv), kind['reference'](*qkv)
    for g, w in zip(*((got, want) if kind is _GRADS else ([got], [want]))):
      g, w = np.asarray(g), np.asarray(w)
      np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
      finite = ~np.isnan(w)
      np.testing.assert_allclose(g[finite], w[finite], atol=1e-4, rtol=1e-4)
  if case == 'key-nan':  # the review's case: all-finite output where XLA's was NaN
    assert np.isnan(np.asarray(_VALUES[implementation](*qkv))[1, :, 1]).all()


@needs_fused
@pytest.mark.parametrize('shape', [(0, 5, 2, 16), (2, 0, 2, 16), (2, 5, 0, 16)])
def test_fused_attention_empty(shape):
  """No examples, tokens or heads: empty values and gradients, through the kernel."""
  x = jnp.zeros(shape, jnp.float32)
  assert fused_attention.supports(x, x, x)
  assert jax.jit(fused_attention.fused_attention)(x, x, x).shape == shape
  grads = jax.jit(jax.grad(lambda q, k, v: jnp.sum(fused_attention.fused_attention(q, k, v)),
                           argnums=(0, 1, 2)))(x, x, x)
  assert [g.shape for g in grads] == [shape] * 3


@needs_fused
def test_stale_fused_library_falls_back(monkeypatch):
  """A library built from another fused_attention.cc (a `git pull` since the build)
  is not used: 'auto' takes the pure-JAX attention, 'fused' refuses, and the reason
  is given (a warning, once)."""
  monkeypatch.setattr(fused_attention, '_source_hash', lambda: '0' * 64)
  fused_attention.unavailable_reason.cache_clear()
  try:
    with pytest.warns(UserWarning, match='built from another fused_attention.cc'):
      reason = fused_attention.unavailable_reason()
    assert 'built from another fused_attention.cc' in reason and 'rebuild' in reason
    with warnings.catch_warnings():
      warnings.simplefilter('error')
      assert fused_attention.unavailable_reason() == reason
      x = jnp.zeros((1, 5, 2, 16))
      assert not fused_attention.supports(x, x, x)
      # A new function: jax caches the jaxprs of attention.attend without the choice.
      auto = lambda *qkv: attention.attend(*qkv)
      assert 'custom_partitioning' not in str(jax.make_jaxpr(auto)(x, x, x))
      with pytest.raises(ValueError, match="'fused' needs .*built from another"):
        attention.attend(x, x, x, implementation='fused')
  finally:
    monkeypatch.undo()
    fused_attention.unavailable_reason.cache_clear()
  assert fused_attention.unavailable_reason() == ''


def test_fused_refuses_what_it_cannot_run():
  x = jnp.zeros((1, 4, 2, 8))
  with pytest.raises(ValueError, match=r"'fused' needs .*shapes \(1, 4, 2, 8\)"):
    attention.attend(x, x, x, implementation='fused')
  x = jnp.zeros((1, 4, 2, 16), jnp.bfloat16)
  with pytest.raises(ValueError, match="'fused' needs .*bfloat16"):
    attention.attend(x, x, x, implementation='fused')
  query, keys = jnp.zeros((1, 4, 2, 16)), jnp.zeros((1, 6, 2, 16))
  with pytest.raises(ValueError, match=r"'fused' needs .*\(1, 6, 2, 16\)"):
    attention.attend(query, keys, keys, implementation='fused')
  assert not fused_attention.supports(query, keys, keys)  # 'auto' leaves it to XLA
  np.testing.assert_allclose(attention.attend(query, keys, keys), 0.0)


@needs_fused
def test_fused_attention_under_vmap():
  """A mapped axis (model 2's per-frame encoder, per-group gradients) is folded into
  the kernel's batch, an unmapped operand broadcast: values and gradients as the
  plain attention's."""
  rng = np.random.RandomState(0)
  query, value, weights = (jnp.asarray(rng.normal(size=(3, 2, 40, 2, 16)), jnp.float32)
                           for _ in range(3))
  key = jnp.asarray(rng.normal(size=(2, 40, 2, 16)), jnp.float32)
  heads_first = lambda x: x.transpose(0, 2, 1, 3)
  plain = lambda q, k, v: heads_first(plain_attention(*map(heads_first, (q, k, v))))

  def mapped(fn):  # values, and gradients of every operand, over the mapped axis
    values = jax.vmap(fn, in_axes=(0, None, 0))
    grads = jax.vmap(jax.grad(lambda q, k, v, w: jnp.sum(jnp.sin(fn(q, k, v)) * w),
                              argnums=(0, 1, 2)), in_axes=(0, None, 0, 0))
    return values, grads
  values, grads = mapped(fused_attention.fused_attention)
  jaxpr = str(jax.make_jaxpr(grads)(query, key, value, weights))
  assert 'custom_vmap' in jaxpr and 'scan' not in jaxpr  # one call, not a loop
  want_values, want_grads = mapped(plain)
  np.testing.assert_allclose(jax.jit(values)(query, key, value),
                             want_values(query, key, value), atol=1e-5, rtol=0)
  for g, w in zip(jax.jit(grads)(query, key, value, weights),
                  want_grads(query, key, value, weights)):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


def test_auto_blocks_long_sequences_only():
  """Head dim 4 (which the fused kernel does not take): blocked from
  BLOCKED_MIN_LENGTH tokens on. Head dim 16: fused at any length, where built."""
  def jaxpr(length, depth=4):
    x = jnp.zeros((1, length, 2, depth))
    return str(jax.make_jaxpr(attention.attend)(x, x, x))
  assert 'scan' in jaxpr(attention.BLOCKED_MIN_LENGTH)
  assert 'scan' not in jaxpr(attention.BLOCKED_MIN_LENGTH - 1)
  if not fused_attention.unavailable_reason():
    assert 'custom_partitioning' in jaxpr(5, depth=16)
  with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
    attention.attend(jnp.zeros((1, 4, 2, 4)), jnp.zeros((1, 4, 2, 4)),
                     jnp.zeros((1, 4, 2, 4)), implementation='flash')


H100 = attention.Accelerator('gpu', nvidia=True, compute_capability=(9, 0),
                             cudnn_version=92800)
A100 = H100._replace(compute_capability=(8, 0))


def arrays(shape=(2, 1568, 12, 64), dtype=jnp.bfloat16, key_length=None):
  """(query, key, value) shapes `[batch, length, heads, head_dim]`; keys of
  `key_length`."""
  query = jax.ShapeDtypeStruct(shape, dtype)
  key = jax.ShapeDtypeStruct((shape[0], key_length or shape[1]) + shape[2:], dtype)
  return query, key, key


@pytest.mark.parametrize('where,shape,key_length,described', [
    (H100, (2, 1568, 12, 64), None, 'cudnn'), (A100, (2, 1568, 12, 64), None, 'cudnn'),
    (H100, (8, 16, 6, 256), None, 'cudnn'), (A100, (1, 2, 1, 8), None, 'cudnn'),
    (H100, (2, 196, 16, 80), None, 'cudnn'),
    (H100, (2, 1569, 12, 64), None, 'cudnn (padded 1569->1576)'),  # CLS + 1568 patches
    (A100, (2, 1568, 12, 64), 9, 'cudnn (padded 1568/9->1568/16)'),
    (A100, (1, 1, 1, 8), None, 'cudnn (padded 1->8)')])
def test_auto_picks_cudnn_on_nvidia_gpus_in_half_precision(where, shape, key_length,
                                                          described):
  """Every token count: odd ones padded to a multiple of 8 (and the other side of
  the attention with them), even ones as they are."""
  for dtype in (jnp.bfloat16, jnp.float16):
    qkv = arrays(shape, dtype, key_length)
    assert attention.cudnn_unavailable_reason(*qkv, where) == ''
    assert attention.auto_implementation(*qkv, where) == 'cudnn'
    assert attention.describe_auto_implementation(*qkv, where) == described


V100 = H100._replace(compute_capability=(7, 0))
FALLBACKS = [  # (where, query/key/value, what the reason says)
    (H100, arrays(dtype=jnp.float32), 'takes bfloat16 or float16, not float32'),
    (H100, arrays(dtype=jnp.float8_e4m3fn), 'not float8_e4m3fn'),
    (H100, arrays((2, 1568, 12, 60)), 'head_dim 60: cuDNN flash attention takes '
                                      'multiples of 8 up to 256'),
    (H100, arrays((2, 1568, 2, 264)), 'multiples of 8 up to 256'),
    (A100, arrays((2, 1568, 4, 256)), 'multiples of 8 up to 128 on compute capability 8.0'),
    (H100._replace(cudnn_version=90400), arrays((2, 16, 4, 256)), 'needs cuDNN 9.5'),
    (V100, arrays(), 'needs compute capability 8.0 or newer (this GPU: 7.0)'),
    (H100._replace(compute_capability=(10, 3), cudnn_version=91000), arrays(),
     'compute capability 10.3 needs cuDNN 9.11'),
    (H100, arrays((2, 0, 12, 64)), 'empty arrays'),
    (H100._replace(nvidia=False), arrays(), 'needs an NVIDIA GPU (JAX runs on gpu)'),
    (H100._replace(cudnn_version=None), arrays(), 'JAX finds no cuDNN'),
]


@pytest.mark.parametrize('where,qkv,reason', FALLBACKS, ids=[r for *_, r in FALLBACKS])
def test_auto_falls_back_on_gpus_with_the_reason(where, qkv, reason):
  """Where cuDNN cannot run: XLA's attention where its three float32 [batch, heads,
  queries, keys] matrices fit 1/32 of the memory (16 GiB where not said), else
  blocked (e.g. [2, 12, 1568, 1568]: 708 MB, more than 512 MiB)."""
  assert reason in attention.cudnn_unavailable_reason(*qkv, where)
  (batch, queries, heads, _), keys = qkv[0].shape, qkv[1].shape[1]
  for memory in (None, 80 * 2**30):
    budget = (memory or 16 * 2**30) / 32
    want = 'xla' if 3 * 4 * batch * heads * queries * keys <= budget else 'blocked'
    assert attention.auto_implementation(*qkv, where._replace(memory=memory)) == want


L4 = H100._replace(compute_capability=(8, 9), memory=22 * 2**30)


def test_float32_on_gpus_xla_while_its_matrices_fit_blocked_beyond(monkeypatch):
  """The three [batch, heads, queries, keys] float32 matrices of XLA's attention
  against 1/32 of the device's memory (`memory_stats()['bytes_limit']`, 16 GiB where
  the device does not say), the examples of an enclosing vmap counted: ViViT-B's
  shapes on an 80 GB H100 and a 22 GiB L4, then at the budget's edge."""
  h100 = H100._replace(memory=80 * 2**30)  # budget 2.5 GiB
  cases = [  # (where, batch, length, auto): 12 heads of 64
      (h100, 1, 3137, 'xla'),      # model 1, one clip: 1.42 GB
      (h100, 2, 3137, 'blocked'),  # two: 2.83 GB
      (L4, 1, 3137, 'blocked'),    # budget 0.69 GiB
      (L4, 8 * 16, 197, 'xla'),    # model 2's spatial encoder, 8 clips: 0.72 GB
      (L4, 16 * 16, 197, 'blocked'),
      (H100, 1, 3137, 'blocked'),  # no memory said: a budget of 16 GiB / 32
      (H100, 4 * 16, 197, 'xla')]
  for where, batch, length, want in cases:
    qkv = arrays((batch, length, 12, 64), jnp.float32)
    assert attention.xla_matrix_bytes(*qkv[:2]) == 3 * 4 * batch * 12 * length**2
    assert attention.auto_implementation(*qkv, where) == want, (where, batch, length)
  # At the edge: (1, 64, 2, 8) holds 3 * 4 * 2 * 64 * 64 = 98304 bytes.
  edge = arrays((1, 64, 2, 8), jnp.float32)
  assert attention.auto_implementation(*edge, H100._replace(memory=32 * 98304)) == 'xla'
  assert attention.auto_implementation(
      *edge, H100._replace(memory=32 * 98304 - 1)) == 'blocked'
  # Four of them under a vmap hold four times as much: blocked where one alone is not.
  monkeypatch.setattr(attention, 'accelerator',
                      lambda: H100._replace(memory=2 * 32 * 98304))
  x = jnp.zeros((1, 64, 2, 8))
  blocked = lambda fn, *args: 'exp2' in str(jax.make_jaxpr(fn)(*args))  # base-2 softmax
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # runs xla/blocked, not in cuDNN: float32
    assert not blocked(lambda *qkv: attention.attend(*qkv), x, x, x)
    mapped = jax.vmap(lambda *qkv: attention.attend(*qkv))
    assert blocked(mapped, *[jnp.stack([x] * 4)] * 3)
    assert blocked(jax.grad(lambda q: jnp.sum(mapped(q, q, q))), jnp.stack([x] * 4))


def test_accelerator_reads_the_gpus_memory(monkeypatch):
  """`memory_stats()['bytes_limit']` where the device has it, None where not."""
  class Gpu:
    compute_capability = '9.0'
    client = type('Client', (), {'platform_version': 'PJRT C API\ncuda 12080'})()

    def __init__(self, stats):
      self.stats = stats

    def memory_stats(self):
      if isinstance(self.stats, Exception):
        raise self.stats
      return self.stats
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  try:
    for stats, memory in (({'bytes_limit': 79 * 2**30, 'bytes_in_use': 0}, 79 * 2**30),
                          (None, None), ({}, None), (NotImplementedError(), None)):
      monkeypatch.setattr(jax, 'local_devices', lambda stats=stats: [Gpu(stats)])
      attention.accelerator.cache_clear()
      found = attention.accelerator()
      assert found == attention.Accelerator('gpu', True, (9, 0), found.cudnn_version,
                                            memory)
  finally:
    attention.accelerator.cache_clear()


CPU_CASES = [  # (query/key/value): float32 at every head dim and length, half precision
    arrays((2, 1568, 12, 64), jnp.float32), arrays((2, 1569, 3, 16), jnp.float32),
    arrays((2, 1568, 12, 8), jnp.float32), arrays((2, 1023, 2, 8), jnp.float32),
    arrays((2, 1568, 12, 64), jnp.bfloat16), arrays((2, 16, 12, 64), jnp.bfloat16),
    arrays((2, 16, 12, 64), jnp.float16), arrays((2, 16, 2, 16), jnp.float32, 2048)]


@pytest.mark.parametrize('qkv', CPU_CASES, ids=lambda c: f'{c[0].shape}-{c[0].dtype}')
def test_cuda_facts_never_change_the_cpu_choice(qkv):
  """On CPU 'auto' is what it was before cuDNN: 'fused' where the kernel takes the
  arrays, else 'blocked' from BLOCKED_MIN_LENGTH keys, else 'xla'; on TPU XLA's."""
  query, key, value = qkv
  before = ('fused' if fused_attention.supports(query, key, value) else
            'blocked' if key.shape[1] >= attention.BLOCKED_MIN_LENGTH else 'xla')
  for where in (attention.Accelerator('cpu'), H100._replace(backend='cpu')):
    assert attention.auto_implementation(query, key, value, where) == before
  assert attention.auto_implementation(query, key, value) == before  # here: a CPU
  assert attention.auto_implementation(query, key, value,
                                       attention.Accelerator('tpu')) == 'xla'


def test_gpu_fallback_warns_once_and_cudnn_refuses_with_the_reason(monkeypatch):
  """float32 on an H100: XLA's attention while it fits, blocked beyond (a device of
  1 kB), each with one warning naming why not cuDNN."""
  x = jnp.zeros((1, 6, 2, 8))
  for memory, implementation in ((None, 'xla'), (2**10, 'blocked')):
    monkeypatch.setattr(attention, 'accelerator',
                        lambda m=memory: H100._replace(memory=m))
    attention._warn_not_cudnn.cache_clear()
    attend = lambda *qkv: attention.attend(*qkv)  # new: jax caches traces of functions
    with pytest.warns(UserWarning, match=f'runs {implementation}, not in cuDNN: cuDNN '
                      'flash attention takes bfloat16 or float16, not float32'):
      jaxpr = str(jax.make_jaxpr(attend)(x, x, x))
    assert ('exp2' in jaxpr) == (implementation == 'blocked')  # its base-2 softmax
    with warnings.catch_warnings():
      warnings.simplefilter('error')
      jax.make_jaxpr(lambda *qkv: attention.attend(*qkv))(x, x, x)  # said once
  monkeypatch.undo()
  with pytest.raises(ValueError, match="'cudnn' cannot run here: cuDNN attention "
                     r'needs an NVIDIA GPU \(JAX runs on cpu\)'):
    attention.attend(x, x, x, implementation='cudnn')


def simulate_cudnn(monkeypatch, where):
  """jax's cuDNN attention traced (`jax.make_jaxpr`: no GPU needed) as on `where`:
  its checks, which run while tracing, answered by `where`'s facts; and
  `attention.accelerator()` is `where`."""
  stablehlo = pytest.importorskip('jax._src.cudnn.fused_attention_stablehlo')
  capability = lambda text: tuple(int(part) for part in text.split('.'))
  monkeypatch.setattr(stablehlo, 'check_cudnn_version', lambda: where.cudnn_version)
  monkeypatch.setattr(stablehlo, 'check_compute_capability',
                      lambda c: where.compute_capability >= capability(c))
  monkeypatch.setattr(stablehlo, 'is_cuda_compute_capability_equal',
                      lambda c: where.compute_capability == capability(c))
  monkeypatch.setattr(attention, 'accelerator', lambda: where)


def test_jax_traces_cudnn_where_the_reason_is_empty(monkeypatch):
  """jax's own checks take what `cudnn_unavailable_reason` passes, differentiated
  too: odd lengths padded (which jax alone refuses), under vmap too."""
  simulate_cudnn(monkeypatch, H100)

  def gradient_jaxpr(shape, attend=attention.attend):
    loss = lambda q, k, v: jnp.sum(attend(q, k, v).astype(jnp.float32))
    x = jnp.zeros(shape, jnp.bfloat16)
    return str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2)))(x, x, x))
  for shape in [(2, 16, 4, 64), (1, 2, 1, 8), (2, 196, 2, 256), (1, 9, 2, 8),
                (2, 197, 2, 64), (3, 2, 17, 2, 64)]:  # the last under a vmap
    attend = jax.vmap(attention.attend) if len(shape) == 5 else attention.attend
    assert 'dot_product_attention_bwd' in gradient_jaxpr(shape, attend), shape
  cudnn = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation='cudnn')
  with pytest.raises(NotImplementedError, match='Unsupported sequence length Q 9'):
    gradient_jaxpr((1, 9, 2, 8), cudnn)


# The token counts (queries, keys) at which the padded attention is compared with
# the plain one: odd (a CLS token: model 2's 197 and 17), queries and keys of
# different counts; then (slow) one token, even but not a multiple of 8, a multiple.
PADDED_LENGTHS = [((17, 17), (197, 197), (9, 17)),
                  ((9, 9), (1, 1), (196, 196), (16, 16))]


@pytest.mark.parametrize('lengths', default_or_slow(PADDED_LENGTHS, PADDED_LENGTHS[:1]))
def test_padded_attention_equals_unpadded(lengths):
  """cuDNN's padding (zeros to a multiple of 8, the true lengths given, the padded
  query rows dropped) run through XLA's attention on CPU with the same lengths:
  values and gradients (query, key, value) within float32 rounding of the unpadded
  attention's, the output of the query's shape. With and without a first token that
  draws most of the attention (key and value 3x the others'), as a CLS token may."""
  cases = []
  for (queries, keys), cls in itertools.product(lengths, (True, False)):
    rng = np.random.RandomState(queries * 1000 + keys)
    query, key, value = (rng.normal(size=(2, n, 3, 64)).astype(np.float32)
                         for n in (queries, keys, keys))
    if cls:
      key[:, 0] *= 3
      value[:, 0] *= 3
    cases.append((query, key, value, rng.normal(size=query.shape).astype(np.float32)))
  padded = lambda q, k, v: attention.padded_attention(q, k, v, 8, 'xla')
  plain = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation='xla')

  @jax.jit  # one compilation for all
  def values_and_gradients(cases):
    results = []
    for query, key, value, cotangent in cases:
      for fn in (padded, plain):
        out, vjp = jax.vjp(fn, query, key, value)
        results.append((out, *vjp(cotangent)))
    return results
  results = values_and_gradients(cases)
  for (query, *_), got, want in zip(cases, results[::2], results[1::2]):
    assert got[0].shape == query.shape
    for g, w in zip(got, want):
      # float32's rounding of sums in another order: ~1e-7 of the largest element
      # (leaving out the lengths or the slice is off by 1e-2 or more).
      assert np.max(np.abs(g - w)) <= 1e-6 * np.max(np.abs(w)), query.shape


# The paper's models at their sizes (32x224x224 clips), bfloat16, one layer per
# encoder (every layer of an encoder makes the same calls): (name, classifier,
# the attention shapes [batch * other axis, tokens, heads, head_dim] of 2 clips).
PAPER_MODELS = [
    ('B/16x2', 'token', [(2, 3137, 12, 64)]),               # model 1: CLS + 16x14x14
    ('B/16x2-FE', 'token', [(2, 197, 12, 64), (2, 17, 12, 64)]),  # model 2 (per frame)
    ('B/16x2-FSA', 'gap', [(392, 16, 12, 64), (32, 196, 12, 64)]),  # model 3
    ('B/16x2-FDP', 'gap', [(392, 16, 6, 64), (32, 196, 6, 64)]),    # model 4
    ('B/16x2', 'gap', [(2, 3136, 12, 64)]),
    ('L/16x2-FE', 'token', [(2, 197, 16, 64), (2, 17, 16, 64)]),
    ('H/14x2', 'token', [(2, 4097, 16, 80)])]                # 16x16x16 tokens + CLS
CUDNN_GPUS = {'A100': A100._replace(cudnn_version=90800), 'L4': L4._replace(
    cudnn_version=90800), 'H100': H100._replace(cudnn_version=90800)}


@pytest.mark.parametrize('name,classifier,shapes', PAPER_MODELS,
                         ids=[f'{name}-{classifier}' for name, classifier, _ in
                              PAPER_MODELS])
def test_every_attention_of_the_paper_models_is_cudnn_on_nvidia_gpus(
    name, classifier, shapes, monkeypatch):
  """The bfloat16 training step's gradient traced as on an A100 (jax's cuDNN checks
  answered as there: the strictest of these GPUs), every `attend` recorded: each
  call, those of model 2's per-frame vmap and model 4's split heads included, is
  cuDNN on the A100, the L4 and the H100 with cuDNN 9.8, and the traced step holds
  one cuDNN attention forward and backward per call and nothing blocked."""
  simulate_cudnn(monkeypatch, CUDNN_GPUS['A100'])
  calls = []
  choose = attention.auto_implementation

  def recorded(query, key, value, where=None):
    calls.append(tuple(jax.ShapeDtypeStruct(x.shape, x.dtype)
                       for x in (query, key, value)))
    return choose(query, key, value, where)
  monkeypatch.setattr(attention, 'auto_implementation', recorded)
  config = get_model_config(name, dtype='bfloat16', classifier=classifier, num_layers=1)
  config.temporal.num_layers = 1
  model = build_model(config)
  video = jax.ShapeDtypeStruct((2, 32, 224, 224, 3), jnp.uint8)
  params = jax.eval_shape(lambda v: model.init(jax.random.PRNGKey(0), v), video)['params']
  loss = lambda p, v: jnp.mean(model.apply({'params': p}, v, train=True).astype(
      jnp.float32))
  calls.clear()  # init's calls
  jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params, video))
  assert [q.shape for q, _, _ in calls] == shapes
  for gpu, where in CUDNN_GPUS.items():
    assert [choose(*qkv, where) for qkv in calls] == ['cudnn'] * len(calls), gpu
  assert jaxpr.count('dot_product_attention_fwd') == len(calls)
  assert jaxpr.count('dot_product_attention_bwd') == len(calls)
  assert 'exp2' not in jaxpr and 'scan' not in jaxpr  # nothing blocked


# Every variant, with and without a CLS token, both embeddings.
CASES = [('spatio_temporal', 'tubelet', 'token'), ('spatio_temporal', 'frame', 'gap'),
         ('factorised_encoder', 'tubelet', 'token'),
         ('factorised_self_attention', 'tubelet', 'gap'),
         ('factorised_dot_product', 'frame', 'gap')]


@pytest.mark.parametrize('case', default_or_slow(CASES, [  # CLS + per-frame vmap; split heads
    ('factorised_encoder', 'tubelet', 'token'), ('factorised_dot_product', 'frame', 'gap')]))
def test_every_variant_blocked_and_fused_equal_xla(case, monkeypatch):
  """Blocks of 4 keys, so every attention (9 tokens with CLS, 8 without, 2 or 4 along
  a factorised axis) spans several blocks or a partial one. Head dim 16 (hidden 32,
  2 heads; model 4: one head per axis) so that the fused kernel takes it."""
  monkeypatch.setattr(attention, 'KEY_BLOCK', 4)
  variant, embedding, classifier = case
  video = random_video()
  implementations = ['xla', 'blocked']
  if not fused_attention.unavailable_reason():
    implementations.append('fused')
  outputs = {}
  for implementation in implementations:
    config = tiny_model_config(variant, embedding, classifier, attention=implementation,
                         num_layers=1, hidden_size=32, num_heads=2)
    config.temporal.update(num_layers=1, num_heads=2)
    model, params = build_model(config), random_params(config)
    loss = lambda p: jnp.mean(model.apply({'params': p}, video) ** 2)
    outputs[implementation] = jax.jit(lambda p: (model.apply({'params': p}, video),
                                                 jax.grad(loss)(p)))(params)
  for implementation in implementations[1:]:
    np.testing.assert_allclose(outputs[implementation][0], outputs['xla'][0], atol=1e-5,
                               rtol=0)
    for got, want in zip(jax.tree_util.tree_leaves(outputs[implementation][1]),
                         jax.tree_util.tree_leaves(outputs['xla'][1])):
      np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
