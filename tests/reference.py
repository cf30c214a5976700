"""Plain-numpy ViViT, written from the paper and scenic's layout, independent of
`vivit.models`: explicit patch loops and per-sequence attention, one example at a
time. Slow, for tiny test models only."""
import numpy as np

EPS = 1e-6


def layer_norm(x, p):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + EPS) * p['scale'] + p['bias']


def gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def qkv(x, p):
  """x [..., D] -> q, k, v [..., heads, hd]."""
  return [np.einsum('...d,dhk->...hk', x, p[n]['kernel']) + p[n]['bias']
          for n in ('query', 'key', 'value')]


def attention_heads(q, k, v):
  """One sequence: q, k, v [N, heads, hd] -> [N, heads, hd]."""
  scores = np.einsum('qhd,khd->hqk', q, k) / np.sqrt(q.shape[-1])
  return np.einsum('hqk,khd->qhd', softmax(scores), v)


def project_out(o, p):
  return np.einsum('...hk,hkd->...d', o, p['out']['kernel']) + p['out']['bias']


def self_attention(x, p):
  """One sequence x [N, D]."""
  return project_out(attention_heads(*qkv(x, p)), p)


def mlp(x, p):
  return gelu(x @ p['Dense_0']['kernel'] + p['Dense_0']['bias']) @ p['Dense_1']['kernel'] \
      + p['Dense_1']['bias']


def vit_block(x, p):
  x = x + self_attention(layer_norm(x, p['LayerNorm_0']), p['MultiHeadDotProductAttention_0'])
  return x + mlp(layer_norm(x, p['LayerNorm_1']), p['MlpBlock_0'])


def factorised_self_attention_block(x, p, order=('time', 'space')):
  """x [T, S, D]: attention along time per position, along space per frame, MLP."""
  x = x.copy()
  for axis in order:
    ln, attn = p[f'LayerNorm_{axis}'], p[f'MultiHeadDotProductAttention_{axis}']
    if axis == 'time':
      update = np.stack([self_attention(layer_norm(x[:, s], ln), attn)
                         for s in range(x.shape[1])], axis=1)
    else:
      update = np.stack([self_attention(layer_norm(x[t], ln), attn)
                         for t in range(x.shape[0])], axis=0)
    x = x + update
  return x + mlp(layer_norm(x, p['LayerNorm_mlp']), p['MlpBlock'])


def factorised_dot_product_block(x, p):
  """x [T, S, D]: heads [0, H/2) attend along time, [H/2, H) along space."""
  attn_p = p['MultiHeadDotProductAttention_0']
  q, k, v = qkv(layer_norm(x, p['LayerNorm_0']), attn_p)  # [T, S, H, hd]
  time, space, heads, _ = q.shape
  out = np.zeros_like(q)
  for h in range(heads):
    if h < heads // 2:
      for s in range(space):
        out[:, s, h:h + 1] = attention_heads(q[:, s, h:h + 1], k[:, s, h:h + 1],
                                             v[:, s, h:h + 1])
    else:
      for t in range(time):
        out[t, :, h:h + 1] = attention_heads(q[t, :, h:h + 1], k[t, :, h:h + 1],
                                             v[t, :, h:h + 1])
  x = x + project_out(out, attn_p)
  return x + mlp(layer_norm(x, p['LayerNorm_1']), p['MlpBlock_0'])


def tokens(video, kernel, bias, tubelet, embedding, num_sampled_frames=None):
  """One video [T, H, W, 3] -> [T', H'W', D] by explicit patch loops."""
  t, h, w = tubelet
  if embedding == 'frame':
    n = num_sampled_frames
    # scenic: frames round(k T / (n + 1)), k = 1..n (half to even); all when n >= T.
    count = video.shape[0]
    video = video[[min(int(np.round(k * count / (n + 1))), count - 1)
                   for k in range(1, n + 1)] if n < count else slice(None)]
    kernel, t = kernel[None], 1
  out_t, out_h, out_w = video.shape[0] // t, video.shape[1] // h, video.shape[2] // w
  result = np.zeros((out_t, out_h * out_w, kernel.shape[-1]))
  for i in range(out_t):
    for j in range(out_h):
      for l in range(out_w):
        patch = video[i * t:(i + 1) * t, j * h:(j + 1) * h, l * w:(l + 1) * w]
        result[i, j * out_w + l] = np.einsum('thwc,thwcd->d', patch, kernel) + bias
  return result


def encoder(x, p, block, **kwargs):
  """x [N, D] (or [T, S, D] for factorised blocks after reshaping)."""
  shape = x.shape
  x = x.reshape(-1, shape[-1]) + p['posembed_input']['pos_embedding'][0]
  x = x.reshape(shape)
  i = 0
  while f'encoderblock_{i}' in p:
    x = block(x, p[f'encoderblock_{i}'], **kwargs)
    i += 1
  return layer_norm(x, p['encoder_norm'])


def head(x, params):
  if 'pre_logits' in params:
    x = np.tanh(x @ params['pre_logits']['kernel'] + params['pre_logits']['bias'])
  return x @ params['output_projection']['kernel'] + params['output_projection']['bias']


def with_cls(x, cls):
  return np.concatenate([cls[0], x], axis=0)


def vivit(video, params, config):
  """Logits of one video [T, H, W, 3] for any of the four variants."""
  p = params
  x = tokens(video, p['embedding']['kernel'], p['embedding']['bias'],
             tuple(config.tubelet), config.embedding, config.num_sampled_frames)
  time, space, hidden = x.shape
  token = config.classifier == 'token'
  pool = {'gap': lambda t: t.mean(0), 'gmp': lambda t: t.max(0),
          'gsp': lambda t: t.sum(0)}.get(config.classifier)
  if config.variant == 'factorised_encoder':
    frames = []
    for t in range(time):
      f = with_cls(x[t], p['cls_SpatialTransformer']) if token else x[t]
      f = encoder(f, p['SpatialTransformer'], vit_block)
      frames.append(f[0] if token else pool(f))
    y = np.stack(frames)
    y = with_cls(y, p['cls_TemporalTransformer']) if token else y
    y = encoder(y, p['TemporalTransformer'], vit_block)
    return head(y[0] if token else pool(y), p)
  if config.variant == 'spatio_temporal':
    y = x.reshape(time * space, hidden)
    y = with_cls(y, p['cls']) if token else y
    y = encoder(y, p['Transformer'], vit_block)
    return head(y[0] if token else pool(y), p)
  if config.variant == 'factorised_self_attention':
    order = tuple(config.attention_order.split('_'))
    y = encoder(x, p['Transformer'], factorised_self_attention_block, order=order)
  else:
    y = encoder(x, p['Transformer'], factorised_dot_product_block)
  return head(pool(y.reshape(-1, hidden)), p)


def vivit_batch(videos, params, config):
  params = to_numpy(params)
  return np.stack([vivit(np.asarray(v, np.float64), params, config) for v in videos])


def to_numpy(tree):
  if isinstance(tree, dict):
    return {k: to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree, np.float64)
