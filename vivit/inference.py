"""A loaded model for prediction, and the views of a video file it takes.

`load` reads a checkpoint (training workdir, params directory, HF ViViT directory
or Hub id) into a `Setup`: the model, its class names, and how its clips are cut
(decode rate, frames, stride, short side, crop), from the training config where
the checkpoint has one. `video_views` cuts a file as the evaluation cuts its
examples, `clip_at` the 1x1 view of the clip from a given second, `window_view` the
1x1 view of frames already decoded. `vivit-predict`, its timelines and its
explanations build on these.

Progress bars are the command's: a function here that reads a file takes `bars`, a
factory `bars(description) -> (progress callback, closer)` (`vivit.cli.progress_bar`),
or None for none.
"""
import dataclasses
import functools
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import ml_collections
import numpy as np

from vivit import video
from vivit.errors import CheckpointError, ConfigError, VideoError

# The preprocessing of a checkpoint without a training config: `prepare`'s default
# frame rate, scenic's Kinetics stride.
DEFAULT_FPS = 25.0
DEFAULT_STRIDE = 2
MAX_STRIDE = 1000  # the largest --stride: frames between a clip's frames

# `bars(description)`: (a reader's progress callback or None, a closer).
ProgressBars = Callable[[str], Tuple[Optional[video.Progress], Callable[[], None]]]


@dataclasses.dataclass(frozen=True)
class Setup:
  """A checkpoint's model and how its clips are cut: `params`, `names` {head:
  [class names]} ('label' for a one-head model), and the decoding (`fps`) and view
  settings (`num_frames`, `stride`, `min_resize`, `crop_size`)."""
  model_config: ml_collections.ConfigDict
  params: Any  # the model's parameter tree
  names: Dict[str, List[str]]
  fps: float
  num_frames: int
  stride: int
  min_resize: int
  crop_size: int

  def view(self) -> Dict[str, int]:
    """The view settings of a clip (`video_views`' keywords)."""
    return dict(num_frames=self.num_frames, stride=self.stride,
                min_resize=self.min_resize, crop_size=self.crop_size)


def load(checkpoint: str, *, fps: Optional[float] = None, stride: Optional[int] = None
         ) -> Setup:
  """The `Setup` of `checkpoint` (workdir, params directory, HF directory or Hub id);
  `fps` and `stride` override the training dataset's.

  A checkpoint is untrusted input: only a trusted workdir (`trusted_workdir`) gives
  its data settings (and with them the prepared dataset whose frame rate is read);
  any other checkpoint's stored config is never read, so it cannot pick what else
  is opened."""
  from vivit import task
  from vivit.convert import read_checkpoint
  from vivit.hub import hub_id, resolve
  from_hub = hub_id(checkpoint) is not None
  checkpoint = resolve(checkpoint)  # a Hub id: its snapshot, for both readers below
  config, params, names = read_checkpoint(checkpoint)
  dataset = (_workdir_dataset(checkpoint)
             if not from_hub and trusted_workdir(checkpoint) else None)
  frames, crop, _ = config.input_size
  if not isinstance(names, dict):  # one head
    names = {'label': names or [f'class_{i}' for i in range(config.num_classes)]}
  return Setup(config, params, names,
               fps=fps or (dataset and task.prepared_fps(dataset)) or DEFAULT_FPS,
               num_frames=frames, crop_size=crop,
               stride=stride or (dataset.stride if dataset else DEFAULT_STRIDE),
               min_resize=(dataset and dataset.min_resize) or task.min_resize(crop))


def trusted_workdir(path: str) -> bool:
  """Whether `path`, a checkpoint the user named that is not a Hub id, is a training
  workdir on the local file system (its config.json, model_config.json and
  checkpoints/ or best/): the user's own training, whose dataset settings
  predict may use. A URL (gs://...) or a Hub snapshot is not trusted: pass --fps
  and --stride for those."""
  from vivit.workdir import is_local
  if not is_local(path) or not os.path.isdir(path):
    return False
  has = lambda name: os.path.exists(os.path.join(path, name))
  return (has('config.json') and has('model_config.json') and
          (has('checkpoints') or has('best')))


def _workdir_dataset(path: str) -> ml_collections.ConfigDict:
  """The dataset section of a trusted workdir's config.json (`task.workdir_dataset`),
  its settings that predict uses checked: CheckpointError naming the file if not."""
  from vivit import task
  config_file = os.path.join(path, 'config.json')
  try:
    dataset = task.workdir_dataset(path)
  except (ValueError, TypeError, AttributeError, KeyError) as e:  # JSON's, ConfigDict's
    raise CheckpointError(f'{config_file} is not a run config: '
                          f'{" ".join(str(e).split())}') from None
  for field, value in (('stride', dataset.stride), ('min_resize', dataset.min_resize)):
    if value is not None and not (isinstance(value, int) and 1 <= value <= 2**16):
      raise CheckpointError(f'{config_file}: dataset.{field} is {value!r}; expected an '
                            f'integer from 1 to {2**16}')
  return dataset


def check_holds_a_clip(count: int, span: int, fps: float) -> None:
  """VideoError unless `count` frames at `fps` hold one clip of `span` frames."""
  if count < span:
    raise VideoError(f'{count / fps:.2f}s of video at {fps:g} fps is shorter than one '
                     f'clip ({span} frames, {span / fps:.2f}s)')


def _read(path: str, resample: video.Resample, keep, bars: Optional[ProgressBars],
          description: str, **segment) -> video.Clip:
  """`video.read_video(path, resample, keep=keep, **segment)`, with a bar named
  `description` if there are `bars`."""
  update, close = bars(description) if bars else (None, lambda: None)
  try:
    return video.read_video(path, resample, keep=keep, progress=update, **segment)
  finally:
    close()


def video_views(path: str, *, fps: float, num_frames: int, stride: int, min_resize: int,
                crop_size: int, num_clips: int, num_crops: int,
                bars: Optional[ProgressBars] = None, whole_clips: bool = False
                ) -> np.ndarray:
  """`[views, num_frames, crop, crop, 3]` uint8: the evaluation's views of the
  video file at `path` (VideoError if it cannot be decoded). Only the frames the
  views use are converted and kept. `bars`: the bars of the two passes over the
  file. `whole_clips`: VideoError for a video shorter than one clip (the evaluation
  repeats its frames to fill one)."""
  import tensorflow as tf
  from vivit.input import sampling
  resample = video.Resample(fps=fps, short_side=min_resize)
  try:
    # The clips' places depend on the exact frame count, which the declared duration
    # does not give: a first pass counts the frames without converting any.
    count = len(_read(path, resample, (), bars, 'counting frames').frames)
    if whole_clips:
      check_holds_a_clip(count, num_frames * stride, fps)
    needed = sampling.eval_clip_indices(count, num_frames, stride, num_clips)
    clip = _read(path, resample, {int(i) for i in needed.numpy().flat}, bars,
                 'decoding the views')
    if len(clip.frames) != count:
      raise VideoError(f'{len(clip.frames)} frames decoded, {count} on a first read')
  except VideoError as e:
    raise VideoError(f'{path}: {e}') from None
  return sampling.eval_views(
      tf.constant(clip.frames), num_frames=num_frames, stride=stride,
      min_resize=min_resize, crop_size=crop_size, num_clips=num_clips,
      num_crops=num_crops).numpy()


def window_view(jpegs: Sequence[bytes], setup: Setup) -> np.ndarray:
  """`[num_frames, crop, crop, 3]` uint8: the 1x1 view of one window's decoded
  frames (JPEGs at `setup.fps`, short side `setup.min_resize`)."""
  import tensorflow as tf
  return _one_view(tuple(setup.view().items()))(tf.constant(list(jpegs))).numpy()[0]


@functools.lru_cache(maxsize=None)
def _one_view(settings):
  """The evaluation's views (1 clip, 1 crop) with `settings` as a TF graph, traced
  once per window length: eagerly, its per-frame decoding loop costs ~15 ms a window."""
  import tensorflow as tf
  from vivit.input import sampling
  return tf.function(functools.partial(sampling.eval_views, num_clips=1, num_crops=1,
                                       **dict(settings)))


def clip_at(path: str, setup: Setup, start: float,
            bars: Optional[ProgressBars] = None) -> np.ndarray:
  """`[num_frames, crop, crop, 3]` uint8: the 1x1 view of the clip of `setup` that
  starts `start` seconds into the video at `path` (a timeline window's), decoding only
  that segment. VideoError if the video ends before the clip does."""
  if start < 0:
    raise ConfigError(f'--start {start:g}: seconds from the beginning, >= 0')
  span = setup.num_frames * setup.stride
  try:
    frames = _read(path, video.Resample(setup.fps, setup.min_resize), None, bars,
                   'decoding the clip', start=start,
                   stop=start + (span + 0.5) / setup.fps).frames
    check_holds_a_clip(len(frames), span, setup.fps)
  except VideoError as e:
    raise VideoError(f'{path} from {start:g}s: {e}') from None
  return window_view(frames[:span], setup)
