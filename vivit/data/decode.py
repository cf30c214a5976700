"""Video files -> JPEG frames at a fixed frame rate and size, with PyAV.

`read_video` is what dataset preparation runs on every video: decode (optionally
only the frames of one segment), resample to `fps` by nearest timestamp, resize so
the short side is `short_side`, and JPEG-encode every frame. Anything wrong with a
file (missing, empty, truncated, undecodable, no video stream) raises `VideoError`
with a one-line reason, so preparation can skip the video and report it.

No TensorFlow here: this module runs in the decoding worker processes.
"""
import dataclasses
import io
import os
from fractions import Fraction
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

JPEG_QUALITY = 90


class VideoError(Exception):
  """A video that cannot be used; the message says why in one line."""


@dataclasses.dataclass(frozen=True)
class Resample:
  """What preparation does to every frame: `fps` 0 keeps the source rate,
  `short_side` 0 keeps the source size."""
  fps: float = 25.0
  short_side: int = 256


@dataclasses.dataclass
class Clip:
  """JPEG frames of one video or segment, and the rate they are stored at."""
  frames: List[bytes]
  fps: float


def output_size(height: int, width: int, short_side: int) -> Tuple[int, int]:
  """(height, width) with min(height, width) == short_side, aspect kept."""
  if not short_side:
    return height, width
  scale = short_side / min(height, width)
  return (max(1, round(height * scale)), max(1, round(width * scale)))


def resample_times(times: Sequence[float], duration: float, fps: float) -> np.ndarray:
  """For output frames at `k / fps`, k < floor(duration * fps), the index of the
  source frame nearest in time (`times` ascending, seconds from the clip start)."""
  count = max(1, int(np.floor(duration * fps + 1e-6)))
  targets = np.arange(count) / fps
  times = np.asarray(times, np.float64)
  right = np.clip(np.searchsorted(times, targets), 1, len(times) - 1) if len(times) > 1 \
      else np.zeros(count, np.int64)
  if len(times) == 1:
    return right
  left = right - 1
  nearer_left = np.abs(targets - times[left]) <= np.abs(times[right] - targets)
  return np.where(nearer_left, left, right)


def encode_jpeg(frame: np.ndarray) -> bytes:
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(frame).save(buffer, format='JPEG', quality=JPEG_QUALITY)
  return buffer.getvalue()


def _to_rgb(frame, size: Tuple[int, int]) -> np.ndarray:
  height, width = size
  return frame.to_ndarray(format='rgb24', width=width, height=height,
                          interpolation='AREA')


def _decoded_frames(path: str, start: Optional[float], stop: Optional[float],
                    threads: bool) -> Iterator[Tuple[float, object, float]]:
  """(time in seconds, av.VideoFrame, source fps) of every frame in [start, stop)."""
  import av
  if not os.path.exists(path):
    raise VideoError('file not found')
  if os.path.getsize(path) == 0:
    raise VideoError('empty file (0 bytes)')
  try:
    container = av.open(path)
  except Exception as e:  # PyAV raises many error types for bad files.
    raise VideoError(f'cannot open: {_reason(e)}') from None
  with container:
    if not container.streams.video:
      raise VideoError('no video stream (audio-only or not a video)')
    stream = container.streams.video[0]
    if threads:
      stream.thread_type = 'AUTO'
    rate = stream.average_rate or stream.guessed_rate or Fraction(25)
    if start:
      try:
        container.seek(int(start / stream.time_base), stream=stream, backward=True)
      except Exception as e:
        raise VideoError(f'cannot seek to {start:.3f}s: {_reason(e)}') from None
    try:
      for frame in container.decode(stream):
        if frame.pts is None:
          continue
        time = float(frame.pts * stream.time_base)
        if start is not None and time < start - 1e-6:
          continue
        if stop is not None and time >= stop - 1e-6:
          break
        yield time, frame, float(rate)
    except av.error.FFmpegError as e:
      raise VideoError(f'decoding failed: {_reason(e)}') from None


def _reason(error: Exception) -> str:
  return ' '.join(str(error).split()) or type(error).__name__


def _finish(times: List[float], frames: List[np.ndarray], source_fps: float,
            resample: Resample) -> Clip:
  if not frames:
    raise VideoError('no frames decoded')
  times = [t - times[0] for t in times]
  if not resample.fps or abs(resample.fps - source_fps) < 1e-3:
    return Clip([encode_jpeg(f) for f in frames], source_fps if not resample.fps
                else resample.fps)
  duration = times[-1] + 1.0 / source_fps
  picks = resample_times(times, duration, resample.fps)
  encoded = {}
  for i in np.unique(picks):
    encoded[int(i)] = encode_jpeg(frames[int(i)])
  return Clip([encoded[int(i)] for i in picks], resample.fps)


def read_video(path: str, resample: Resample, *, start: Optional[float] = None,
               stop: Optional[float] = None, threads: bool = False) -> Clip:
  """The frames of `path` (or of its segment [start, stop) seconds) at
  `resample.fps`, short side `resample.short_side`, JPEG-encoded.

  Raises VideoError naming what is wrong with the file."""
  times, frames, source_fps, size = [], [], 25.0, None
  for time, frame, source_fps in _decoded_frames(path, start, stop, threads):
    if size is None:
      size = output_size(frame.height, frame.width, resample.short_side)
    times.append(time)
    frames.append(_to_rgb(frame, size))
  return _finish(times, frames, source_fps, resample)


def read_frame_files(paths: Sequence[str], source_fps: float, resample: Resample) -> Clip:
  """Like `read_video`, for a segment given as one image file per source frame
  (Epic-Kitchens' released `rgb_frames`)."""
  from PIL import Image
  frames = []
  for path in paths:
    try:
      with Image.open(path) as image:
        image = image.convert('RGB')
        height, width = output_size(image.height, image.width, resample.short_side)
        if (height, width) != (image.height, image.width):
          image = image.resize((width, height), Image.BILINEAR)
        frames.append(np.asarray(image))
    except FileNotFoundError:
      raise VideoError(f'frame file not found: {path}') from None
    except OSError as e:
      raise VideoError(f'cannot read frame {path}: {_reason(e)}') from None
  return _finish([i / source_fps for i in range(len(frames))], frames, source_fps,
                 resample)
