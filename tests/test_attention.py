"""The key-blocked attention against the plain one: values and gradients, every
variant, with and without CLS, lengths that are not a multiple of the block."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_params, random_video, tiny_config
from vivit.models import build_model, layers


def plain_attention(query, key, value):
  """`[batch, heads, length, head_dim]` softmax attention, written out."""
  logits = jnp.einsum('bhqd,bhkd->bhqk', query, key) / np.sqrt(query.shape[-1])
  return jnp.einsum('bhqk,bhkd->bhqd', jax.nn.softmax(logits, -1), value)


@pytest.mark.parametrize('length,block', [(37, 16), (64, 16), (5, 16), (100, 7)])
def test_blocked_attention_values_and_gradients(length, block):
  rng = np.random.RandomState(length)
  query, key, value = (jnp.asarray(rng.normal(size=(2, 3, length, 8)) * 2, jnp.float32)
                       for _ in range(3))
  blocked = lambda q, k, v: layers.blocked_attention(q, k, v, block)
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
  blocked = lambda q, k, v: layers.blocked_attention(q, k, v, 32)
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


def test_auto_blocks_long_sequences_only():
  def uses_scan(length):
    x = jnp.zeros((1, length, 2, 4))
    return 'scan' in str(jax.make_jaxpr(layers.attend)(x, x, x))
  assert uses_scan(layers.BLOCKED_MIN_LENGTH) and not uses_scan(layers.BLOCKED_MIN_LENGTH - 1)
  with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
    layers.attend(jnp.zeros((1, 4, 2, 4)), jnp.zeros((1, 4, 2, 4)), jnp.zeros((1, 4, 2, 4)),
                  implementation='flash')


# Every variant, with and without a CLS token, both embeddings.
CASES = [('spatio_temporal', 'tubelet', 'token'), ('spatio_temporal', 'frame', 'gap'),
         ('factorised_encoder', 'tubelet', 'token'),
         ('factorised_self_attention', 'tubelet', 'gap'),
         ('factorised_dot_product', 'frame', 'gap')]


@pytest.mark.parametrize('case', CASES, ids=lambda c: '-'.join(c))
def test_every_variant_blocked_equals_xla(case, monkeypatch):
  """Blocks of 4 keys, so every attention (9 tokens with CLS, 8 without, 2 or 4 along
  a factorised axis) spans several blocks or a partial one."""
  monkeypatch.setattr(layers, 'KEY_BLOCK', 4)
  variant, embedding, classifier = case
  video = random_video()
  outputs = {}
  for attention in ('xla', 'blocked'):
    config = tiny_config(variant, embedding, classifier, attention=attention, num_layers=1)
    config.temporal.num_layers = 1
    model, params = build_model(config), random_params(config)
    loss = lambda p: jnp.mean(model.apply({'params': p}, video) ** 2)
    outputs[attention] = jax.jit(lambda p: (model.apply({'params': p}, video),
                                            jax.grad(loss)(p)))(params)
  np.testing.assert_allclose(outputs['blocked'][0], outputs['xla'][0], atol=1e-5, rtol=0)
  for got, want in zip(jax.tree_util.tree_leaves(outputs['blocked'][1]),
                       jax.tree_util.tree_leaves(outputs['xla'][1])):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
