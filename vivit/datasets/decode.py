"""Video files -> JPEG frames at a fixed frame rate and size, with PyAV.

`read_video` is what dataset preparation runs on every video: decode (optionally
only the frames of one segment), resample to `fps` by nearest timestamp, resize so
the short side is `short_side`, and JPEG-encode the frames as they stream past, so
memory holds JPEGs, not decoded video. Anything wrong with a file (missing, empty,
truncated, undecodable, no video stream) raises `VideoError` with a one-line reason,
so preparation can skip the video and report it.

No TensorFlow here: this module runs in the decoding worker processes.
"""
import dataclasses
import io
import os
from fractions import Fraction
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from vivit.errors import VideoError

JPEG_QUALITY = 90
# A file (or segment) whose frames end more than this, or 10 % of its length,
# before its declared end is truncated.
TRUNCATION_TOLERANCE_S = 1.0


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


def encode_jpeg(frame: np.ndarray) -> bytes:
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(frame).save(buffer, format='JPEG', quality=JPEG_QUALITY)
  return buffer.getvalue()


def _reason(error: Exception) -> str:
  return ' '.join(str(error).split()) or type(error).__name__


def resample(frames: Iterable[Tuple[float, object]], source_fps: float, fps: float,
             to_rgb) -> List[bytes]:
  """JPEG frames at `fps` from `(time, frame)` pairs in time order: output frame k
  (time k / fps after the first frame) is the source frame nearest in time (the
  earlier one on a tie), for k < floor(duration * fps), duration running to one
  source frame after the last. `to_rgb(frame)` gives `[height, width, 3]` uint8;
  each source frame is converted and encoded at most once. `fps` 0, or the source's
  own rate, keeps them all."""
  if abs(fps - source_fps) < 1e-3:
    fps = 0
  out: List[bytes] = []
  held, held_time, held_jpeg, start = None, 0.0, None, None

  def emit():
    nonlocal held_jpeg
    if held_jpeg is None:
      held_jpeg = encode_jpeg(to_rgb(held))
    out.append(held_jpeg)

  for time, frame in frames:
    if start is None:
      start = time
    time -= start
    if held is not None:
      if not fps:
        emit()
      else:
        midpoint = (held_time + time) / 2
        while len(out) / fps <= midpoint + 1e-9:
          emit()
    held, held_time, held_jpeg = frame, time, None
  if held is None:
    raise VideoError('no frames decoded')
  if not fps:
    emit()
    return out
  duration = held_time + 1.0 / source_fps
  # The tolerance absorbs timestamps rounded to the container's time base.
  count = max(1, int(np.floor(duration * fps + 0.05)))
  while len(out) < count:
    emit()
  return out


def _open_stream(path: str):
  import av
  if not os.path.exists(path):
    raise VideoError('file not found')
  if os.path.getsize(path) == 0:
    raise VideoError('empty file (0 bytes)')
  try:
    container = av.open(path)
  except Exception as e:  # PyAV raises many error types for bad files.
    raise VideoError(f'cannot open: {_reason(e)}') from None
  if not container.streams.video:
    container.close()
    raise VideoError('no video stream (audio-only or not a video)')
  return container, container.streams.video[0]


def _declared_duration(container, stream) -> Optional[float]:
  if stream.duration is not None:
    return float(stream.duration * stream.time_base)
  if container.duration is not None:
    return container.duration / 1e6  # AV_TIME_BASE
  return None


class _SeekMissed(Exception):
  """A seek failed or landed after the first frame of the segment."""


def _frames(container, stream, rate: float, seek_to: Optional[float]
            ) -> Iterator[Tuple[float, object]]:
  """(seconds from the stream start, frame) of every decoded frame from `seek_to`
  on; frames without a timestamp are placed one frame after the previous one."""
  import av
  origin = stream.start_time or 0
  if seek_to:
    try:
      container.seek(origin + int(seek_to / stream.time_base), stream=stream,
                     backward=True)
    except av.error.FFmpegError:
      raise _SeekMissed from None
  previous = None
  for frame in container.decode(stream):
    if frame.pts is None:
      time = 0.0 if previous is None else previous + 1.0 / rate
    else:
      time = float((frame.pts - origin) * stream.time_base)
    previous = time
    yield time, frame


def read_video(path: str, resample_to: Resample, *, start: Optional[float] = None,
               stop: Optional[float] = None, only_if_longer: bool = False,
               threads: bool = False) -> Clip:
  """The frames of `path` (or of its segment [start, stop) seconds) at
  `resample_to.fps`, short side `resample_to.short_side`, JPEG-encoded.

  `only_if_longer`: cut the segment only from a file longer than it (a file named
  for a whole YouTube video may hold the whole video or just the clip).
  Raises VideoError naming what is wrong with the file."""
  import av
  container, stream = _open_stream(path)
  with container:
    if threads:
      stream.thread_type = 'AUTO'
    rate = float(stream.average_rate or stream.guessed_rate or Fraction(25))
    declared = _declared_duration(container, stream)
    if only_if_longer and declared is not None and start is not None and stop is not None \
        and declared <= stop - start + TRUNCATION_TOLERANCE_S:
      start = stop = None
    size = None

    def to_rgb(frame):
      nonlocal size
      if size is None:
        size = output_size(frame.height, frame.width, resample_to.short_side)
      return frame.to_ndarray(format='rgb24', width=size[1], height=size[0],
                              interpolation='AREA')

    last_time = [0.0]

    def selected(source, seek: bool):
      """The segment's frames, noting the last one's time."""
      first = True
      for time, frame in _frames(source, source.streams.video[0], rate,
                                 start if seek else None):
        if start is not None and time < start - 1e-6:
          continue
        if stop is not None and time >= stop - 1e-6:
          break
        if first and seek and time > start + 1.5 / rate:
          raise _SeekMissed  # landed after the segment's first frame
        first = False
        last_time[0] = time
        yield time, frame
      if first and seek:
        raise _SeekMissed  # landed nowhere

    try:
      try:
        frames = resample(selected(container, seek=bool(start)), rate, resample_to.fps,
                          to_rgb)
      except _SeekMissed:
        # Some containers (raw streams, MPEG-TS) seek badly: read from the start.
        with _open_stream(path)[0] as again:
          frames = resample(selected(again, seek=False), rate, resample_to.fps, to_rgb)
    except av.error.FFmpegError as e:
      raise VideoError(f'decoding failed: {_reason(e)}') from None
    if declared is not None:
      expected_end = declared if stop is None else min(stop, declared)
      decoded_end = last_time[0] + 1.0 / rate
      length = expected_end - (start or 0.0)
      if decoded_end < expected_end - max(TRUNCATION_TOLERANCE_S, 0.1 * length):
        raise VideoError(f'truncated: frames end at {decoded_end:.2f}s of '
                         f'{expected_end:.2f}s')
  return Clip(frames, resample_to.fps or rate)


def read_frame_files(paths: Sequence[str], source_fps: float, resample_to: Resample
                     ) -> Clip:
  """Like `read_video`, for a segment given as one image file per source frame
  (Epic-Kitchens' released `rgb_frames`)."""
  from PIL import Image

  def to_rgb(path):
    try:
      with Image.open(path) as image:
        image = image.convert('RGB')
        height, width = output_size(image.height, image.width, resample_to.short_side)
        if (height, width) != (image.height, image.width):
          image = image.resize((width, height), Image.BILINEAR)
        return np.asarray(image)
    except FileNotFoundError:
      raise VideoError(f'frame file not found: {path}') from None
    except OSError as e:
      raise VideoError(f'cannot read frame {path}: {_reason(e)}') from None

  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise VideoError(f'{len(missing)} frame files not found, e.g. {missing[0]}')
  timed = ((i / source_fps, path) for i, path in enumerate(paths))
  return Clip(resample(timed, source_fps, resample_to.fps, to_rgb),
              resample_to.fps or source_fps)
