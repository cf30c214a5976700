"""Where and when a ViViT looked: `vivit-predict --checkpoint DIR --video FILE --explain OUT`.

The relevance of every space-time token of a clip to one class (`vivit.relevance`:
'rollout', attention rollout, class-agnostic, the default for CLS-token classifiers
when no class is named; 'gradient', gradient-weighted attention, class-specific,
the default otherwise), as an `Explanation` of the class (named, or the first
head's most probable), and its files: OUT.png (frames above their heat overlays),
OUT.gif (each frame beside its overlay) and OUT.npz (the token relevance).
"""
import dataclasses
from typing import Dict, List, Optional, Tuple

import numpy as np

from vivit import outputs
from vivit.errors import ConfigError
from vivit.inference import Setup

METHODS = ('auto', 'rollout', 'gradient')
DISPLAY_SIZE = 160  # frames are shown at least this many pixels high
GRID_FRAMES = 8  # at most, evenly spread over the clip


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


def explain(setup: Setup, clip: np.ndarray, *, class_name: Optional[str] = None,
            method: str = 'auto') -> Explanation:
  """The `Explanation` of the model of `setup` on `clip` `[time, height, width, 3]`
  uint8, for `class_name` (default: the first head's most probable class). `method`:
  one of `METHODS`; 'auto' is 'rollout' for a CLS-token classifier when no class is
  named, else 'gradient'."""
  from vivit.models import embedded_frames
  from vivit.relevance import token_relevance  # loads the models: not at start-up
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
  from vivit.timeline import LITERAL_TEXT
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
                  f'{explanation.method} relevance', fontsize=10, **LITERAL_TEXT)
  figure.savefig(path, dpi=100, format='png')  # (`path` may be a temporary name)


def write_gif(path: str, explanation: Explanation) -> None:
  """Each frame beside its heat overlay, at the clip's pace."""
  from PIL import Image
  frames, overlays = _display(explanation)
  images = [Image.fromarray(np.concatenate([f, o], 1)) for f, o in zip(frames, overlays)]
  images[0].save(path, format='GIF', save_all=True, append_images=images[1:], loop=0,
                 duration=max(20, round(1000 * explanation.seconds_per_frame)))


def write_npz(path: str, explanation: Explanation) -> None:
  """`tokens`, `frames`, `head`, `class_name`, `probability` and `method`."""
  with open(path, 'wb') as f:  # (a name not ending .npz would get it appended)
    np.savez(f, tokens=explanation.tokens, frames=np.asarray(explanation.frames),
             head=explanation.head, class_name=explanation.class_name,
             probability=explanation.probability, method=explanation.method)


def paths(out: str) -> List[str]:
  """The files `write` writes: OUT.png, OUT.gif and OUT.npz."""
  return [f'{out}.png', f'{out}.gif', f'{out}.npz']


def write(out: str, explanation: Explanation) -> List[str]:
  """OUT.png, OUT.gif and OUT.npz (`write_npz`), all or none
  (`outputs.write_files`); their paths."""
  png_path, gif_path, npz_path = paths(out)
  return outputs.write_files({png_path: lambda path: write_png(path, explanation),
                              gif_path: lambda path: write_gif(path, explanation),
                              npz_path: lambda path: write_npz(path, explanation)})
