"""A checkpoint as one pure function from raw frames to class probabilities: what
`vivit-export` serialises (`vivit.export`).

`serving_function(setup)` returns `(fn, params)`; `fn(params, video)` takes `video`
uint8 `[batch, frames, height, width, 3]`, frames at the model's rate (`setup.fps`),
any size and any count from one clip's span (`num_frames * stride`) on, and does
the evaluation's 1x1 view itself (`centre_view`: the centre clip, the short side
resized to `min_resize`, the centre crop) before the model. It returns
{'probabilities': `[batch, classes]` float32, 'top_classes': `[batch, k]` int32 class
indices, best first}; with several heads (Epic-Kitchens' verb and noun) each head's
own, as '<head>_probabilities' and '<head>_top_classes'. It traces with symbolic
batch, frame count and frame size (`jax.export`'s shape polymorphism) and uses the
portable attention ('xla'): no custom call, so the function lowers for every
platform.
"""
from typing import Any, Callable, Dict, List, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vivit.inference import Setup

# Most classes a 'top_classes' output names.
TOP_CLASSES = 5


def output_names(names: Dict[str, List[str]]) -> Dict[str, Tuple[str, str]]:
  """{head: (its probabilities output, its top classes output)}: plain names for a
  one-head model ('label'), prefixed with the head's name otherwise."""
  if list(names) == ['label']:
    return {'label': ('probabilities', 'top_classes')}
  return {head: (f'{head}_probabilities', f'{head}_top_classes') for head in names}


def _bilinear_taps(in_size, out_size, first, count: int):
  """TF's half-pixel bilinear resize (`tf.image.resize`, no antialiasing) along one
  axis, for output pixels `first .. first + count - 1` of `out_size`: (lower,
  upper, weight of upper), each `[count]`. Sizes are int32 scalars (symbolic
  dimensions when exported)."""
  scale = in_size.astype(jnp.float32) / out_size.astype(jnp.float32)
  position = ((first + jnp.arange(count)).astype(jnp.float32) + 0.5) * scale - 0.5
  floor = jnp.floor(position)
  lower = jnp.maximum(floor.astype(jnp.int32), 0)
  upper = jnp.minimum(jnp.ceil(position).astype(jnp.int32), in_size - 1)
  return lower, upper, position - floor


def centre_view(video, *, num_frames: int, stride: int, min_resize: int, crop_size: int):
  """`[batch, frames, height, width, 3]` uint8 -> the evaluation's 1x1 view,
  `[batch, num_frames, crop_size, crop_size, 3]` uint8, as
  `vivit.input.sampling.eval_views` cuts it with one clip and one crop: frames
  `(N - num_frames * stride) // 2 + i * stride`, the short side resized bilinearly to
  `min_resize` (the long one to `long * min_resize // short`) and truncated to uint8,
  the centre square. Only the crop's pixels are interpolated."""
  count, height, width = (jnp.asarray(d, jnp.int32) for d in video.shape[1:4])
  offset = jnp.maximum(count - num_frames * stride, 0) // 2
  frames = jnp.take(video, (offset + jnp.arange(num_frames) * stride) % count, axis=1)
  resized_height = jnp.maximum(min_resize, height * min_resize // width)
  resized_width = jnp.maximum(min_resize, width * min_resize // height)
  top, bottom, row_weight = _bilinear_taps(height, resized_height,
                                           (resized_height - crop_size) // 2, crop_size)
  left, right, column_weight = _bilinear_taps(width, resized_width,
                                              (resized_width - crop_size) // 2, crop_size)
  frames = frames.astype(jnp.float32)
  rows_above, rows_below = (jnp.take(frames, rows, axis=2) for rows in (top, bottom))

  def along_width(lines):
    left_pixels, right_pixels = (jnp.take(lines, cols, axis=3) for cols in (left, right))
    return left_pixels + (right_pixels - left_pixels) * column_weight[:, None]
  above, below = along_width(rows_above), along_width(rows_below)
  view = above + (below - above) * row_weight[:, None, None]
  return jnp.clip(view, 0, 255).astype(jnp.uint8)


def flat_params(params) -> Dict[str, np.ndarray]:
  """{'a/b/kernel': array}: the parameter tree as one flat dict, the form the
  exported functions take it in (an `.npz` loads back as it)."""
  return {name: np.asarray(value) for name, value in
          flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/').items()}


def serving_function(setup: Setup) -> Tuple[Callable[[Any, Any], Dict[str, Any]],
                                            Dict[str, np.ndarray]]:
  """(fn, flat params) of `setup`'s model: `fn(params, video)`, the module's
  docstring's function."""
  from vivit.models import build_model
  from vivit.step import head_slices
  config = setup.model_config.copy_and_resolve_references()
  config.attention = 'xla'
  model = build_model(config)
  heads = [(head, len(names)) for head, names in setup.names.items()]
  outputs = output_names(setup.names)

  def fn(params, video):
    view = centre_view(video, **setup.view())
    tree = flax.traverse_util.unflatten_dict(params, sep='/')
    logits = model.apply({'params': tree}, view).astype(jnp.float32)
    result = {}
    for head, part in head_slices(heads):
      probabilities = jax.nn.softmax(logits[:, part], axis=-1)
      # A sort, not lax.top_k: its StableHLO is a composite op that TensorFlow's
      # runtimes (XlaCallModule, StableHLO 1.13 in TF 2.21) cannot read yet.
      top = jnp.argsort(-probabilities, axis=-1, stable=True)[:, :TOP_CLASSES]
      probabilities_name, top_name = outputs[head]
      result[probabilities_name], result[top_name] = probabilities, top.astype(jnp.int32)
    return result
  return fn, flat_params(setup.params)


def span(setup: Setup) -> int:
  """Frames one clip spans: the fewest a served video may have."""
  return setup.num_frames * setup.stride

