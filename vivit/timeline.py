"""Class probability over time: `vivit-predict --checkpoint DIR --video FILE --timeline OUT`.

The video is decoded as a stream (`video.stream_video`) and cut into windows of the
model's clip (frames x stride at the decode rate) every `hop` seconds (default: one
clip's duration, so the windows tile the video); memory holds one window's frames and
one batch of windows whatever the video's length. Each window is the 1x1 test view
(short side resized, centre crop); batches of windows go through the model (compiled
once) and every head's softmax is taken per window, optionally averaged over `smooth`
neighbouring windows. Writes OUT.csv and OUT.json (each window's start and end in
seconds and its top classes per head) and OUT.png (a heat strip of the top classes'
probability over time per head, thumbnails of the video above it).
"""
import collections
import csv
import dataclasses
import io
import json
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np

from vivit import outputs
from vivit.errors import ConfigError, VideoError
from vivit.inference import ProgressBars, Setup, check_holds_a_clip, window_view
from vivit.video import Resample, stream_video

DEFAULT_BATCH = 8
THUMBNAILS = 8  # along the time axis of the picture
PLOTTED_CLASSES = 10  # per head: those with the highest peak probability
THUMBNAIL_PIXELS = 64  # their height in the picture (at 100 dpi)
THUMBNAIL_MAX_WIDTH = 140  # pixels: a wider frame is shown lower, eight fit side by side
# The properties of a text of names (classes, heads) drawn as given: no mathtext
# ($...$) and no LaTeX, whatever the user's matplotlibrc says.
LITERAL_TEXT = dict(parse_math=False, usetex=False)


@dataclasses.dataclass(frozen=True)
class Windows:
  """Windows of `span` output frames every `hop` frames, at `fps`; a window gathers
  every `stride`-th frame of its span from its first."""
  span: int
  stride: int
  hop: int
  fps: float

  def seconds(self, k: int) -> Tuple[float, float]:
    """(start, end) of window k in seconds."""
    return k * self.hop / self.fps, (k * self.hop + self.span) / self.fps

  def __contains__(self, index: int) -> bool:
    """Whether some window gathers output frame `index` (a reader's `keep`)."""
    first = max(0, -(-(index - self.span + 1) // self.hop))
    return any((index - k * self.hop) % self.stride == 0
               for k in range(first, index // self.hop + 1))


def windows_of(num_frames: int, stride: int, hop_s: Optional[float], fps: float) -> Windows:
  """The windows of a model's `num_frames` x `stride` clip every `hop_s` seconds
  (None: one clip's duration), rounded to whole frames at `fps`."""
  if hop_s is not None and hop_s <= 0:
    raise ConfigError(f'--hop {hop_s:g}: the windows must move forward (hop > 0 seconds)')
  span = num_frames * stride
  hop = span if hop_s is None else max(1, round(hop_s * fps))
  return Windows(span, stride, hop, fps)


def window_frames(frames: Iterable[bytes], windows: Windows
                  ) -> Iterator[Tuple[int, List[bytes]]]:
  """(k, the `span` frames of window k) for every window that ends inside `frames`,
  holding one span of frames. VideoError if there is none (a video shorter than one
  clip)."""
  held = collections.deque(maxlen=windows.span)
  count = 0
  for count, frame in enumerate(frames, 1):
    held.append(frame)
    start = count - windows.span
    if start >= 0 and start % windows.hop == 0:
      yield start // windows.hop, list(held)
  check_holds_a_clip(count, windows.span, windows.fps)


def batched(items: Iterable, size: int) -> Iterator[list]:
  """Lists of `size` consecutive items (the last one shorter)."""
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def logits_function(setup: Setup, batch: int):
  """`views [n <= batch, frames, crop, crop, 3]` -> logits `[n, classes]`, compiled
  once for `batch` views (a shorter batch is padded)."""
  import jax
  from vivit.models import build_model
  model = build_model(setup.model_config)
  apply = jax.jit(lambda params, views: model.apply({'params': params}, views))

  def logits(views: np.ndarray) -> np.ndarray:
    padded = np.zeros((batch,) + views.shape[1:], views.dtype)
    padded[:len(views)] = views
    return np.asarray(apply(setup.params, padded))[:len(views)]
  return logits


class EvenlySpaced:
  """Keeps at most `2 * count` of a stream of items offered with indices 0, 1, ...,
  evenly spaced whatever the stream's length: every `step`-th, the step doubling
  whenever the kept ones overflow."""

  def __init__(self, count: int):
    self.limit, self.step, self.items = 2 * count, 1, []

  def offer(self, index: int, item) -> None:
    if index % self.step:
      return
    self.items.append((index, item))
    if len(self.items) > self.limit:
      self.step *= 2
      self.items = [(i, x) for i, x in self.items if i % self.step == 0]

  def pick(self, count: int) -> list:
    """`count` (index, item) pairs spread over the ones kept."""
    if len(self.items) <= count:
      return list(self.items)
    return [self.items[i] for i in np.linspace(0, len(self.items) - 1, count).round()
            .astype(int)]


@dataclasses.dataclass
class Timeline:
  """Per window k: `starts[k]`, `ends[k]` in seconds, and `probabilities[head][k]`
  `[classes]`; `names` {head: class names}; `thumbnails` [(second, JPEG)]."""
  video: str
  windows: Windows
  starts: np.ndarray
  ends: np.ndarray
  probabilities: Dict[str, np.ndarray]
  names: Dict[str, List[str]]
  thumbnails: List[Tuple[float, bytes]]
  smooth: int = 1


def smoothed(probabilities: np.ndarray, n: int) -> np.ndarray:
  """`[windows, classes]` averaged over `n` neighbouring windows, centred (at the
  ends, over those there)."""
  if n <= 1:
    return probabilities
  before, after = (n - 1) // 2, n // 2
  sums = np.concatenate([np.zeros_like(probabilities[:1]), np.cumsum(probabilities, 0)])
  k = np.arange(len(probabilities))
  low, high = np.maximum(k - before, 0), np.minimum(k + after + 1, len(probabilities))
  return (sums[high] - sums[low]) / (high - low)[:, None]


def _decoded(video: str, setup: Setup, windows: Windows, bars: Optional[ProgressBars]
             ) -> Iterator[bytes]:
  """`stream_video` of the windows' frames, with a bar from `bars` if any;
  VideoError messages name the file."""
  update, close = bars('timeline') if bars else (None, lambda: None)
  try:
    yield from stream_video(video, Resample(setup.fps, setup.min_resize), keep=windows,
                            progress=update)
  except VideoError as e:
    raise VideoError(f'{video}: {e}') from None
  finally:
    close()


def timeline(setup: Setup, video: str, *, hop: Optional[float] = None,
             batch: int = DEFAULT_BATCH, smooth: int = 1,
             bars: Optional[ProgressBars] = None) -> Timeline:
  """The `Timeline` of `video` under `setup`: see the module. `bars`: the progress
  bars (`inference.ProgressBars`), None for none."""
  from vivit.step import head_probabilities
  if batch < 1 or smooth < 1:
    raise ConfigError(f'--batch {batch}, --smooth {smooth}: both at least 1')
  windows = windows_of(setup.num_frames, setup.stride, hop, setup.fps)
  logits = logits_function(setup, batch)
  thumbnails = EvenlySpaced(THUMBNAILS)
  middle = windows.span // 2 // windows.stride * windows.stride  # a gathered frame
  outputs = []
  for chunk in batched(window_frames(_decoded(video, setup, windows, bars), windows),
                       batch):
    for k, jpegs in chunk:
      thumbnails.offer(k, jpegs[middle])
    outputs.append(logits(np.stack([window_view(jpegs, setup) for _, jpegs in chunk])))
  probabilities = head_probabilities(np.concatenate(outputs), setup.names)
  bounds = np.array([windows.seconds(k) for k in range(sum(map(len, outputs)))])
  return Timeline(video, windows, bounds[:, 0], bounds[:, 1],
                  {head: smoothed(p, smooth) for head, p in probabilities.items()},
                  setup.names,
                  [((k * windows.hop + middle) / windows.fps, jpeg)
                   for k, jpeg in thumbnails.pick(THUMBNAILS)], smooth)


def top_classes(result: Timeline, top: int) -> List[Dict[str, List[Tuple[str, float]]]]:
  """Per window: {head: [(class name, probability), ...] best first}."""
  order = {head: np.argsort(-p, axis=1)[:, :top] for head, p in result.probabilities.items()}
  return [{head: [(result.names[head][i], float(result.probabilities[head][k, i]))
                  for i in order[head][k]] for head in order}
          for k in range(len(result.starts))]


def write_csv(path: str, result: Timeline, top: int) -> None:
  """One row per window: start, end, then per head and rank its class and probability."""
  heads = list(result.names)
  ranks = min(top, min(len(n) for n in result.names.values()))
  header = ['start_s', 'end_s'] + [f'{head}_{field}_{r}' for head in heads
                                   for r in range(1, ranks + 1)
                                   for field in ('class', 'probability')]
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(header)
    for start, end, classes in zip(result.starts, result.ends, top_classes(result, ranks)):
      row = [f'{start:.3f}', f'{end:.3f}']
      for head in heads:
        for name, probability in classes[head]:
          row += [name, f'{probability:.4f}']
      writer.writerow(row)


def write_json(path: str, result: Timeline, top: int) -> None:
  """The settings and, per window, its start, end and top classes per head."""
  windows = result.windows
  value = {'video': result.video, 'fps': windows.fps,
           'window': {'frames': windows.span, 'stride': windows.stride,
                      'seconds': windows.span / windows.fps},
           'hop_seconds': windows.hop / windows.fps, 'smooth': result.smooth,
           'windows': [{'start': round(float(start), 4), 'end': round(float(end), 4),
                        'top': {head: [[name, round(p, 5)] for name, p in classes]
                                for head, classes in top.items()}}
                       for start, end, top in zip(result.starts, result.ends,
                                                  top_classes(result, top))]}
  with open(path, 'w') as f:
    json.dump(value, f, indent=1)


def _thumbnail_row(axes, result: Timeline) -> None:
  """The thumbnails at their times, above the strips (same time axis)."""
  from matplotlib.offsetbox import AnnotationBbox, OffsetImage
  from PIL import Image
  axes.set_ylim(0, 1)
  axes.axis('off')
  for second, jpeg in result.thumbnails:
    image = np.asarray(Image.open(io.BytesIO(jpeg)).convert('RGB'))
    box = OffsetImage(image, zoom=min(THUMBNAIL_PIXELS / image.shape[0],
                                      THUMBNAIL_MAX_WIDTH / image.shape[1]))
    axes.add_artist(AnnotationBbox(box, (second, 0.5), frameon=False))


def _heat_strip(axes, result: Timeline, head: str):
  """Probability over time of the head's classes with the highest peaks; the image."""
  probabilities = result.probabilities[head]
  shown = np.argsort(-probabilities.max(0))[:PLOTTED_CLASSES]
  centres = (result.starts + result.ends) / 2
  half = result.windows.hop / result.windows.fps / 2
  image = axes.imshow(probabilities[:, shown].T, aspect='auto', cmap='magma', vmin=0,
                      vmax=1, interpolation='nearest',
                      extent=(centres[0] - half, centres[-1] + half, len(shown), 0))
  axes.set_yticks(np.arange(len(shown)) + 0.5)
  axes.set_yticklabels([result.names[head][i] for i in shown], fontsize=8,
                      **LITERAL_TEXT)
  if len(result.names) > 1:
    axes.set_title(head, fontsize=9, loc='left', **LITERAL_TEXT)
  return image


def write_png(path: str, result: Timeline) -> None:
  """The heat strips, one per head, under a row of thumbnails."""
  from matplotlib.figure import Figure
  heads = list(result.names)
  rows = [min(PLOTTED_CLASSES, len(result.names[head])) for head in heads]
  heights = [THUMBNAIL_PIXELS / 100 * 1.3] + [0.3 + 0.22 * n for n in rows]
  figure = Figure(figsize=(12, sum(heights) + 0.6), layout='constrained')
  axes = figure.subplots(len(heights), 1, sharex=True,
                         gridspec_kw={'height_ratios': heights})
  images = [_heat_strip(row, result, head) for row, head in zip(axes[1:], heads)]
  # One colour bar beside every row keeps the thumbnails' time axis the strips'.
  figure.colorbar(images[0], ax=list(axes), pad=0.01, fraction=0.02, label='probability')
  _thumbnail_row(axes[0], result)
  axes[-1].set_xlabel('seconds')
  figure.savefig(path, dpi=100, format='png')  # (`path` may be a temporary name)


def paths(out: str) -> List[str]:
  """The files `write` writes: OUT.csv, OUT.json and OUT.png."""
  return [f'{out}.csv', f'{out}.json', f'{out}.png']


def write(out: str, result: Timeline, top: int) -> List[str]:
  """OUT.csv, OUT.json and OUT.png, all or none (`outputs.write_files`); their paths."""
  csv_path, json_path, png_path = paths(out)
  return outputs.write_files({csv_path: lambda path: write_csv(path, result, top),
                              json_path: lambda path: write_json(path, result, top),
                              png_path: lambda path: write_png(path, result)})
