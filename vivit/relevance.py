"""Which space-time tokens of a clip a ViViT's output comes from: relevance from its
attention probabilities, for all four variants (the model built with
`attention='observed'`, which materialises them; training and plain prediction keep
the paths that never do):

- 'rollout' (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020):
  each attention layer mixes tokens by its head-averaged probabilities `A`, the
  residual keeps them: the layers' `(I + A)` multiplied through the encoder.
  Class-agnostic.
- 'gradient' (Chefer, Gur & Wolf, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021): the same
  product with `A` replaced by the head average of `(dA * A)+`, the probabilities
  weighted by the gradient of the class's logit with respect to them, negative parts
  dropped. Class-specific; covers pooled (GAP) models.

What is explained is the classifier's input: the CLS token's row of the product, or
for pooled models ('gap', and 'gsp', the same up to a factor) the mean of all rows less
the identity (every token's own residual path, the same for all). Max pooling ('gmp')
takes each feature from its own token, which no row describes: explaining such a model
is refused (ConfigError). Factorised attention is exact, not approximated: model 3's
time and space attentions are layers of their own (each mixes tokens only along its
axis), model 4's blocks average its time heads' and space heads' matrices (half the
heads each). Model 2 chains its two encoders: patch `p` of frame `t` gets
`T[t] * S_t[p]`, `T[t]` the relevance of frame `t`'s token to the temporal encoder's
output and `S_t[p]` that of the patch to frame `t`'s spatial output, neither normalised
on its own. That is the product through both encoders with the paths from the CLS
input tokens (which carry no pixels) dropped: a frame whose spatial output comes less
from its patches than from its CLS token gets less. The product is evaluated as a row
vector pulled back through the layers, so no `[tokens, tokens]` matrix beyond
attention's own is made; the relevance is normalised once, over all tokens.

Each encoder block kind says which attention layers it has in `RELEVANCE_LAYERS`
(read through `variants.for_block`).
"""
import functools
from typing import Callable, List, Sequence, Tuple

import numpy as np

from vivit.errors import ConfigError
from vivit.models import variants


def _mixed(v, layer, grid):
  """`v M` for a relevance row `v [..., tokens]` and one attention `layer`: (kind,
  matrix `M`): 'all' `[..., q, k]`, or model 3/4's per-axis matrices 'time'
  `[batch*space, time, time]`, 'space' `[batch*time, space, space]` and 'heads' (model
  4: both, averaged). `grid`: (time, space) token counts."""
  import jax.numpy as jnp
  kind, matrix = layer
  if kind == 'all':
    return jnp.einsum('...q,...qk->...k', v, matrix)
  if kind == 'heads':
    time_matrix, space_matrix = matrix
    return 0.5 * (_mixed(v, ('time', time_matrix), grid)
                  + _mixed(v, ('space', space_matrix), grid))
  time, space = grid
  batch = v.shape[0]
  grid_v = v.reshape(batch, time, space)
  if kind == 'time':
    out = jnp.einsum('bts,bstu->bus', grid_v, matrix.reshape(batch, space, time, time))
  else:
    out = jnp.einsum('bts,btsr->btr', grid_v, matrix.reshape(batch, time, space, space))
  return out.reshape(batch, time * space)


# One block's token-mixing matrix: `matrix(block, attention, part)`, the head mean of
# the probabilities (or of the gradient-weighted ones) of attention module
# `attention` of encoder block `block`, `part` 'all' or (model 4) 'time' / 'space'.
Matrix = Callable[[str, str, str], object]
# An attention layer as `_mixed` takes it: (kind, matrix or matrices).
Layer = Tuple[str, object]
# `layers(matrix, block, model_config)`: the attention layers of one encoder block, in
# forward order.
BlockLayers = Callable[[Matrix, str, object], List[Layer]]


def _joint_layers(matrix: Matrix, block: str, config) -> List[Layer]:
  """One attention over all tokens."""
  return [('all', matrix(block, 'MultiHeadDotProductAttention_0', 'all'))]


def _factorised_self_attention_layers(matrix: Matrix, block: str, config) -> List[Layer]:
  """Model 3: time and space attention, each a layer of its own, in the block's order."""
  return [(axis, matrix(block, f'MultiHeadDotProductAttention_{axis}', 'all'))
          for axis in config.attention_order.split('_')]


def _factorised_heads_layers(matrix: Matrix, block: str, config) -> List[Layer]:
  """Model 4: one layer, its time heads' and space heads' matrices averaged."""
  return [('heads', tuple(matrix(block, 'MultiHeadDotProductAttention_0', part)
                          for part in ('time', 'space')))]


# The `BlockLayers` of each encoder block kind (`vivit.models.variants`).
RELEVANCE_LAYERS = {
    variants.JOINT_BLOCK: _joint_layers,
    variants.FACTORISED_SELF_ATTENTION_BLOCK: _factorised_self_attention_layers,
    variants.FACTORISED_HEADS_BLOCK: _factorised_heads_layers,
}


def _layers(matrix: Matrix, layers_of_block: BlockLayers, config, num_layers: int
            ) -> List[Layer]:
  """The attention layers of one encoder of `num_layers` blocks, in forward order."""
  return [layer for i in range(num_layers)
          for layer in layers_of_block(matrix, f'encoderblock_{i}', config)]


def _encoder_relevance(layers, tokens: int, has_cls: bool, grid=None, lead=()):
  """Relevance `[*lead, tokens]` of an encoder's input tokens (CLS left out) to its
  pooled output: the CLS row, or the mean row, of the layers' product less the
  identity."""
  import jax.numpy as jnp
  length = tokens + has_cls
  start = (jnp.zeros(length).at[0].set(1.0) if has_cls else jnp.full(length, 1 / length))
  v = jnp.broadcast_to(start, (*lead, length))
  for layer in reversed(layers):  # v (I + M_L) ... (I + M_1)
    v = v + _mixed(v, layer, grid)
  return (v - start)[..., int(has_cls):]


def _normalised(x, axes):
  import jax.numpy as jnp
  return x / jnp.maximum(x.sum(axes, keepdims=True), 1e-30)


def pixel_relevance(tokens: np.ndarray, model_config, clip_shape: Sequence[int]
                    ) -> np.ndarray:
  """Token relevance `[batch, t', h', w']` spread evenly over the pixels each token
  embeds: `[batch, time, height, width]`, mass kept (frames a frame-embedding model
  does not sample get none)."""
  from vivit.models import embedded_frames
  time, height, width = clip_shape
  _, patch_h, patch_w = model_config.tubelet
  frames = embedded_frames(model_config, time)
  steps = len(frames) // tokens.shape[1]  # frames per token step: the tubelet's, or 1
  spread = tokens.repeat(steps, 1).repeat(patch_h, 2).repeat(patch_w, 3) / (
      steps * patch_h * patch_w)
  pixels = np.zeros((tokens.shape[0], time, height, width), spread.dtype)
  pixels[:, frames] = spread
  return pixels


def _observed_model(model_config):
  """The model of `model_config` with attention 'observed', in float32."""
  from vivit.models import build_model
  config = model_config.copy_and_resolve_references()
  config.update(attention='observed', remat=False, dtype='float32')
  return build_model(config)


def _observe(model, params, clips, targets):
  """Traceable `observed_attention` (grads None without `targets`)."""
  import jax
  import jax.numpy as jnp
  if targets is None:
    logits, state = model.apply({'params': params}, clips, mutable=['intermediates'])
    return state['intermediates'], None, logits
  perturbations = jax.tree_util.tree_map(
      lambda s: jnp.zeros(s.shape, s.dtype),
      jax.eval_shape(model.init, jax.random.PRNGKey(0), clips)['perturbations'])

  def target_logits(perturbations):
    logits, state = model.apply({'params': params, 'perturbations': perturbations},
                                clips, mutable=['intermediates'])
    return (jnp.take_along_axis(logits, targets[:, None], 1).sum(),
            (state['intermediates'], logits))
  grads, (weights, logits) = jax.grad(target_logits, has_aux=True)(perturbations)
  return weights, grads, logits


def observed_attention(model_config, params, clips, targets=None):
  """The attention probabilities of `clips` `[batch, time, height, width, 3]`, their
  gradients with respect to each clip's logit `targets` `[batch]` (None: no
  gradients, no backward pass), and the logits `[batch, classes]`: (weights, grads,
  logits), the first two as the model's 'intermediates' / 'perturbations' trees
  (`SelfAttention.observe`). Every layer's, per head: `token_relevance` returns only
  the relevance, which takes less memory."""
  import jax
  model = _observed_model(model_config)
  return jax.jit(functools.partial(_observe, model))(
      params, clips, None if targets is None else np.asarray(targets, np.int32))


def _relevance(model_config, shape: Sequence[int], method: str):
  """Traceable `(weights, grads) -> [batch, t', h', w']` of `relevance_from_attention`;
  ConfigError here, untraced, for what cannot be explained."""
  import jax.numpy as jnp
  from vivit.models import token_grid
  variant = variants.get(model_config.variant)
  layers_of_block = variants.for_block(RELEVANCE_LAYERS, variant.block, 'explaining a model')
  if model_config.classifier == 'gmp':
    raise ConfigError("explaining a model is not supported for classifier 'gmp': max "
                      'pooling takes each feature from its own token, which no attention '
                      "row describes ('token', 'gap' and 'gsp' models can be explained)")
  has_cls = model_config.classifier == 'token'
  batch, clip_shape = shape[0], shape[1:4]
  time, height, width = token_grid(model_config, clip_shape)
  space = height * width

  def relevance(weights, grads):
    def layers(encoder, count):
      def matrix(block, attention, part):  # [..., heads, q, k] -> [..., q, k]
        probabilities = weights[encoder][block][attention][part][0]  # sown: 1-tuples
        if method == 'rollout':
          return probabilities.mean(-3)
        gradient = grads[encoder][block][attention][part]
        return jnp.maximum(probabilities * gradient, 0).mean(-3)
      return _layers(matrix, layers_of_block, model_config, count)
    if variant.per_frame:
      spatial = _encoder_relevance(layers('SpatialTransformer', model_config.num_layers),
                                   space, has_cls, lead=(batch, time))
      temporal = _encoder_relevance(
          layers('TemporalTransformer', model_config.temporal.num_layers), time, has_cls,
          lead=(batch,))
      tokens = temporal[..., None] * spatial
    else:
      tokens = _encoder_relevance(layers('Transformer', model_config.num_layers),
                                  time * space, has_cls, grid=(time, space), lead=(batch,))
    return _normalised(tokens.reshape(batch, -1), -1).reshape(batch, time, height, width)
  return relevance


def relevance_from_attention(model_config, weights, grads, shape: Sequence[int],
                             method: str) -> np.ndarray:
  """`observed_attention`'s weights and grads -> the relevance `[batch, t', h', w']`
  of each token (`token_relevance`) by `method` ('rollout' or 'gradient': it needs
  the grads); `shape`: the clips' (batch, time, height, width). ConfigError for a
  max-pooling ('gmp') model."""
  import jax
  _check_method(method, grads is not None)
  return np.asarray(jax.jit(_relevance(model_config, shape, method))(weights, grads))


def _check_method(method: str, have_grads: bool) -> None:
  if method not in ('rollout', 'gradient') or (method == 'gradient' and not have_grads):
    raise ValueError(f'relevance by {method!r} (grads given: {have_grads}): '
                     "'rollout', or 'gradient' with targets / grads")


def token_relevance(model_config, params, clips, targets, method: str
                    ) -> Tuple[np.ndarray, np.ndarray]:
  """Relevance of each token of `clips` `[batch, time, height, width, 3]` to the
  logits `targets` `[batch]` by `method` ('rollout', which ignores the targets, or
  'gradient'): `[batch, t', h', w']` (the token grid; frame embedding: t' = the
  sampled frames), each clip's summing to 1 (all 0 where nothing is relevant); and
  the logits `[batch, classes]`. One compiled computation that returns only those
  (memory: model 1 at ViViT-B size, 3137 tokens, peaks at 3.4 GB for rollout, against
  7.9 GB when every layer's probabilities are returned). ConfigError for a
  max-pooling ('gmp') model, before anything is computed."""
  import jax
  _check_method(method, targets is not None or method == 'rollout')
  relevance = _relevance(model_config, clips.shape[:4], method)
  model = _observed_model(model_config)

  def run(params, clips, targets):
    weights, grads, logits = _observe(model, params, clips, targets)
    return relevance(weights, grads), logits
  tokens, logits = jax.jit(run)(
      params, clips, None if method == 'rollout' else np.asarray(targets, np.int32))
  return np.asarray(tokens), np.asarray(logits)


