"""Where and when a ViViT looked: `vivit-predict --checkpoint DIR --video FILE --explain OUT`.

The relevance of every space-time token of a clip to one class, for all four variants,
from the attention probabilities (the model built with `attention='observed'`, which
materialises them; training and plain prediction keep the paths that never do):

- 'rollout' (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020):
  each attention layer mixes tokens by its head-averaged probabilities `A`, the
  residual keeps them: the layers' `(I + A)` multiplied through the encoder.
  Class-agnostic. The default for CLS-token classifiers when no class is named.
- 'gradient' (Chefer, Gur & Wolf, "Generic Attention-model Explainability for
  Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021): the same
  product with `A` replaced by the head average of `(dA * A)+`, the probabilities
  weighted by the gradient of the class's logit with respect to them, negative parts
  dropped. Class-specific; covers pooled (GAP) models. The default otherwise.

What is explained is the classifier's input: the CLS token's row of the product, or
for pooled models the mean of all rows less the identity (every token's own residual
path, the same for all). Factorised attention is exact, not approximated: model 3's
time and space attentions are layers of their own (each mixes tokens only along its
axis), model 4's blocks average its time heads' and space heads' matrices (half the
heads each), and model 2 weighs each frame's spatial relevance by that frame's
relevance in the temporal encoder. The product is evaluated as a row vector pulled
back through the layers, so no `[tokens, tokens]` matrix beyond attention's own is made.
"""
import dataclasses
import functools
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from vivit.errors import ConfigError

METHODS = ('auto', 'rollout', 'gradient')
DISPLAY_SIZE = 160  # frames are shown at least this many pixels high
GRID_FRAMES = 8  # at most, evenly spread over the clip


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


def _layers(matrix, block_kind: str, config, num_layers: int) -> List[Tuple[str, object]]:
  """The attention layers of one encoder in forward order, as `_mixed` takes them;
  `matrix(block, attention, part)`: the token-mixing matrix of one attention."""
  from vivit.models import variants
  layers = []
  for i in range(num_layers):
    block = f'encoderblock_{i}'
    if block_kind == variants.JOINT_BLOCK:
      layers.append(('all', matrix(block, 'MultiHeadDotProductAttention_0', 'all')))
    elif block_kind == variants.FACTORISED_SELF_ATTENTION_BLOCK:
      for axis in config.attention_order.split('_'):
        layers.append((axis, matrix(block, f'MultiHeadDotProductAttention_{axis}', 'all')))
    else:
      layers.append(('heads', tuple(matrix(block, 'MultiHeadDotProductAttention_0', part)
                                    for part in ('time', 'space'))))
  return layers


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


def object_mass_ratio(pixels: np.ndarray, mask: np.ndarray, frames: Sequence[int]
                      ) -> np.ndarray:
  """Per clip: the relevance mass on the object (`mask [batch, time, height, width]`,
  True on its pixels) over the share of the `frames` seen that the object covers.
  1 is what relevance spread evenly gives; 2 is twice that."""
  mass = (pixels * mask).sum((1, 2, 3)) / np.maximum(pixels.sum((1, 2, 3)), 1e-30)
  return mass / mask[:, frames].mean((1, 2, 3))


def object_mass_ratios(model_config, params, clips, objects, targets, method: str
                       ) -> np.ndarray:
  """`object_mass_ratio` per clip of the relevance of `clips` `[batch, time, height,
  width, 3]` to the logits `targets` by `method`, `objects` `[batch, time, height,
  width]` True where the object is (a dataset that knows, as `synthetic_motion`)."""
  from vivit.models import embedded_frames
  tokens, _ = token_relevance(model_config, params, clips, targets, method)
  pixels = pixel_relevance(tokens, model_config, clips.shape[1:4])
  return object_mass_ratio(pixels, objects, embedded_frames(model_config, clips.shape[1]))


def untrained_params(model_config, seed: int = 0):
  """The baseline of a model that has learnt nothing: params as initialised, except
  the head, drawn like a dense layer's (it starts at zero, which would zero every
  gradient and leave 'gradient' relevance empty)."""
  import jax
  from vivit.models import init_params
  params = init_params(model_config, jax.random.PRNGKey(seed))
  head = params['output_projection']['kernel']
  params['output_projection']['kernel'] = np.random.RandomState(seed).normal(
      0, head.shape[0] ** -0.5, head.shape).astype(np.float32)
  return params


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
  """Traceable `(weights, grads) -> [batch, t', h', w']` of `relevance_from_attention`."""
  import jax.numpy as jnp
  from vivit.models import token_grid, variants
  variant = variants.get(model_config.variant)
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
      return _layers(matrix, variant.block, model_config, count)
    if variant.per_frame:
      spatial = _encoder_relevance(layers('SpatialTransformer', model_config.num_layers),
                                   space, has_cls, lead=(batch, time))
      temporal = _encoder_relevance(
          layers('TemporalTransformer', model_config.temporal.num_layers), time, has_cls,
          lead=(batch,))
      tokens = _normalised(temporal, -1)[..., None] * _normalised(spatial, -1)
    else:
      tokens = _encoder_relevance(layers('Transformer', model_config.num_layers),
                                  time * space, has_cls, grid=(time, space), lead=(batch,))
    return _normalised(tokens.reshape(batch, -1), -1).reshape(batch, time, height, width)
  return relevance


def relevance_from_attention(model_config, weights, grads, shape: Sequence[int],
                             method: str) -> np.ndarray:
  """`observed_attention`'s weights and grads -> the relevance `[batch, t', h', w']`
  of each token (`token_relevance`) by `method` ('rollout' or 'gradient': it needs
  the grads); `shape`: the clips' (batch, time, height, width)."""
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
  7.9 GB when every layer's probabilities are returned)."""
  import jax
  _check_method(method, targets is not None or method == 'rollout')
  model = _observed_model(model_config)
  relevance = _relevance(model_config, clips.shape[:4], method)

  def run(params, clips, targets):
    weights, grads, logits = _observe(model, params, clips, targets)
    return relevance(weights, grads), logits
  tokens, logits = jax.jit(run)(
      params, clips, None if method == 'rollout' else np.asarray(targets, np.int32))
  return np.asarray(tokens), np.asarray(logits)


@dataclasses.dataclass
class Explanation:
  """Where and when the model looked in `clip` `[time, height, width, 3]` (uint8)
  to give `class_name` (of `head`) its `probability`: `tokens` `[t', h', w']`, the
  relevance of each token (summing to 1) by `method`; `frames`, the clip frames the
  tokens embed; `seconds_per_frame`, the clip's frame spacing."""
  clip: np.ndarray
  tokens: np.ndarray
  frames: List[int]
  head: str
  class_name: str
  probability: float
  method: str
  seconds_per_frame: float


def _target(names: Dict[str, List[str]], probabilities: Dict[str, np.ndarray],
            class_name: Optional[str]) -> Tuple[str, int, int]:
  """(head, index in the head, index in the logits) of `class_name` (HEAD:NAME where
  heads share names), or of the first head's most probable class."""
  from vivit.step import head_slices
  offsets = {head: part.start for head, part in
             head_slices([(head, len(head_names)) for head, head_names in names.items()])}
  if class_name is None:
    head = next(iter(names))
    index = int(np.argmax(probabilities[head]))
    return head, index, offsets[head] + index
  found = [(head, names[head].index(class_name)) for head in names
           if class_name in names[head]]
  head_name, _, name = class_name.partition(':')
  if not found and head_name in names and name in names[head_name]:
    found = [(head_name, names[head_name].index(name))]
  if len(found) != 1:
    known = '; '.join(f'{head}: {", ".join(n[:20])}{" ..." if len(n) > 20 else ""}'
                      for head, n in names.items())
    raise ConfigError(
        f'--class {class_name!r}: ' + ('in several heads, name one as HEAD:NAME'
                                       if found else f'no such class ({known})'))
  head, index = found[0]
  return head, index, offsets[head] + index


def explain(setup, clip: np.ndarray, *, class_name: Optional[str] = None,
            method: str = 'auto') -> Explanation:
  """The `Explanation` of the model of `setup` (a `predict.Setup`) on `clip`
  `[time, height, width, 3]` uint8, for `class_name` (default: the first head's
  most probable class). `method`: one of `METHODS`; 'auto' is 'rollout' for a
  CLS-token classifier when no class is named, else 'gradient'."""
  from vivit.models import embedded_frames
  from vivit.step import head_probabilities
  config = setup.model_config
  if method not in METHODS:
    raise ConfigError(f'--method {method!r}: one of {", ".join(METHODS)}')
  if method == 'auto':
    method = ('rollout' if config.classifier == 'token' and class_name is None
              else 'gradient')
  if method == 'rollout' and class_name is not None:
    raise ConfigError('--method rollout is the same for every class; explain a named '
                      '--class with --method gradient')
  # The class from float32 logits (whatever the checkpoint's dtype); rollout needs no
  # class, so one pass gives both.
  tokens, logits = token_relevance(config, setup.params, clip[None], None, 'rollout')
  probabilities = head_probabilities(logits[0], setup.names)
  head, index, target = _target(setup.names, probabilities, class_name)
  if method == 'gradient':
    tokens, _ = token_relevance(config, setup.params, clip[None], [target], method)
  return Explanation(clip, tokens[0], embedded_frames(config, len(clip)), head,
                     setup.names[head][index], float(probabilities[head][index]),
                     method, setup.stride / setup.fps)


def display_heat(explanation: Explanation, size: Tuple[int, int]) -> np.ndarray:
  """`[time, height, width]` in [0, 1] at display `size` (height, width): each seen
  frame's token relevance resized bilinearly (token centres on their patches'
  centres), divided by the clip's largest; frames the model does not embed are 0."""
  import jax
  tokens = explanation.tokens
  per_frame = len(explanation.frames) // tokens.shape[0]  # a tubelet's frames
  heat = np.zeros((len(explanation.clip), *size), np.float32)
  for k, frame in enumerate(explanation.frames):
    heat[frame] = jax.image.resize(tokens[k // per_frame], size, 'linear')
  return np.clip(heat / max(heat.max(), 1e-30), 0, 1)


def _display(explanation: Explanation):
  """(frames `[time, h, w, 3]`, their heat overlays) at display size (nearest-pixel
  enlarged to at least `DISPLAY_SIZE` high), both uint8."""
  from matplotlib import colormaps
  clip = explanation.clip
  scale = max(1, -(-DISPLAY_SIZE // clip.shape[1]))
  frames = clip.repeat(scale, 1).repeat(scale, 2)
  heat = display_heat(explanation, frames.shape[1:3])
  # Half frame, half colour map: irrelevant places dark, relevant ones bright.
  overlays = 0.5 * frames + 0.5 * colormaps['inferno'](heat)[..., :3] * 255
  return frames, overlays.round().astype(np.uint8)


def write_png(path: str, explanation: Explanation) -> None:
  """The clip's frames (at most `GRID_FRAMES`, evenly spread over those the model
  embeds) above their heat overlays."""
  from matplotlib.figure import Figure
  frames, overlays = _display(explanation)
  shown = [explanation.frames[i] for i in np.linspace(
      0, len(explanation.frames) - 1, min(GRID_FRAMES, len(explanation.frames))
  ).round().astype(int)]
  figure = Figure(figsize=(1.6 * len(shown), 3.7), layout='constrained')
  axes = figure.subplots(2, len(shown), squeeze=False)
  for column, frame in enumerate(shown):
    axes[0, column].imshow(frames[frame])
    axes[1, column].imshow(overlays[frame])
    axes[0, column].set_title(f'{frame * explanation.seconds_per_frame:.2f} s into the clip',
                              fontsize=7)
    for row in axes[:, column]:
      row.set_xticks([])
      row.set_yticks([])
  figure.suptitle(f'{explanation.class_name} ({explanation.probability:.0%}): '
                  f'{explanation.method} relevance', fontsize=10)
  figure.savefig(path, dpi=100)


def write_gif(path: str, explanation: Explanation) -> None:
  """Each frame beside its heat overlay, at the clip's pace."""
  from PIL import Image
  frames, overlays = _display(explanation)
  images = [Image.fromarray(np.concatenate([f, o], 1)) for f, o in zip(frames, overlays)]
  images[0].save(path, save_all=True, append_images=images[1:], loop=0,
                 duration=max(20, round(1000 * explanation.seconds_per_frame)))


def write(out: str, explanation: Explanation) -> List[str]:
  """OUT.png, OUT.gif and OUT.npz (`tokens`, `frames`, `class_name`, `probability`,
  `method`); their paths."""
  paths = [f'{out}.png', f'{out}.gif', f'{out}.npz']
  write_png(paths[0], explanation)
  write_gif(paths[1], explanation)
  np.savez(paths[2], tokens=explanation.tokens, frames=np.asarray(explanation.frames),
           head=explanation.head, class_name=explanation.class_name,
           probability=explanation.probability, method=explanation.method)
  return paths
