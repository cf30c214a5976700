"""Reading video files with PyAV: JPEG frames at a fixed frame rate and size.

`read_video` is what dataset preparation runs on every video: decode (optionally
only the frames of one segment), turn them upright (the rotation a phone records in
the stream's display matrix or `rotate` tag), resample to `fps` by nearest
timestamp, resize so the short side is `short_side`, and JPEG-encode the frames as
they stream past, so memory holds JPEGs, not decoded video. Anything wrong with a
file (missing, empty, truncated, undecodable, no video stream, a frame rate or
timestamp gap that is not video, more frames kept than the ceilings below, frames
too wide for a JPEG) raises `VideoError` with a one-line reason, so preparation can
skip the video and report it. `stream_video` yields the same frames one at a time
(for a timeline over a video of any length); `read_frame_files` reads a segment
released as one image file per frame.

No TensorFlow here: this module runs in the decoding worker processes.
"""
import dataclasses
import io
import itertools
import math
import os
from fractions import Fraction
from typing import (Callable, Container, Iterable, Iterator, List, Optional, Sequence,
                    Tuple)

import numpy as np

from vivit.errors import VideoError

JPEG_QUALITY = 90
# A file (or segment) whose frames end more than this, or 10 % of its length,
# before its declared end is truncated; frames that far after it are not read.
TRUNCATION_TOLERANCE_S = 1.0
# Declared source rates outside this range are not video (a slide show, a broken
# time base): resampling them to 25 fps would invent thousands of frames.
MIN_SOURCE_FPS = 1.0
MAX_SOURCE_FPS = 1000.0
# A longer pause between two frames is refused rather than filled with repeats of
# the frame before it. Variable-rate recordings (phones, screen captures) hold a
# still frame for a second or two, so the limit is in seconds, not frame periods.
MAX_GAP_S = 5.0
# Per-video ceilings on the frames kept (every output frame in preparation; only
# its views' frames in prediction, which counts the others without keeping them),
# checked before a frame is encoded or repeated.
# Preparation holds about 7.5x a video's JPEG bytes while it writes its example
# (measured), so MAX_JPEG_BYTES keeps a worker under ~2.7 GB whatever the file.
MAX_FRAMES = 18_000  # 12 minutes at 25 fps
MAX_PIXELS = 2_000_000_000  # frames x height x width: 17,000 frames at 256x455
MAX_JPEG_BYTES = 256 << 20  # every repeat counted; e.g. 13,000 frames of 20 KB
# The longest side a JPEG frame may have (libjpeg's JPEG_MAX_DIMENSION).
MAX_JPEG_SIDE = 65500

# A reader's progress callback: `progress(seconds, end)` is told each source frame's
# time and the declared end of what is read (None if the file declares none).
Progress = Callable[[float, Optional[float]], None]


@dataclasses.dataclass(frozen=True)
class Resample:
  """What preparation does to every frame: `fps` 0 keeps the source rate,
  `short_side` 0 keeps the source size."""
  fps: float = 25.0
  short_side: int = 256


@dataclasses.dataclass
class Clip:
  """JPEG frames of one video or segment, and the rate they are stored at (frames
  that the reader was told not to keep are empty, b'')."""
  frames: List[bytes]
  fps: float


def output_size(height: int, width: int, short_side: int) -> Tuple[int, int]:
  """(height, width) with min(height, width) == short_side, aspect kept; VideoError
  if a side is longer than a JPEG frame's can be."""
  size = (height, width)
  if short_side:
    scale = short_side / min(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
  if max(size) > MAX_JPEG_SIDE:
    resized = f' at short side {short_side} is {size[0]}x{size[1]}' if short_side else ''
    raise VideoError(f'frame size: {height}x{width} (height x width){resized}, over the '
                     f'{MAX_JPEG_SIDE} pixels a side of a JPEG frame can have '
                     f'(video.MAX_JPEG_SIDE)')
  return size


def encode_jpeg(frame: np.ndarray) -> bytes:
  from PIL import Image
  buffer = io.BytesIO()
  Image.fromarray(frame).save(buffer, format='JPEG', quality=JPEG_QUALITY)
  return buffer.getvalue()


def _reason(error: Exception) -> str:
  return ' '.join(str(error).split()) or type(error).__name__


def _slots_until(emitted: int, time: float, fps: float) -> int:
  """How many output frames from index `emitted` on are at or before `time`
  seconds: `k / fps <= time` (plus 1e-9), counted without a loop over them."""
  bound = time + 1e-9
  end = max(emitted, int(math.floor(bound * fps)))
  while end / fps <= bound:  # corrects the guess's rounding: a step or two at most
    end += 1
  while end > emitted and (end - 1) / fps > bound:
    end -= 1
  return end - emitted


def _repeats(frames: Iterable[Tuple[float, object]], source_fps: float, fps: float
             ) -> Iterator[Tuple[object, int]]:
  """(frame, n) for each `(time, frame)` in time order: the frame fills the next n
  output frames (0: dropped). Output frame k (time k / fps after the first frame)
  is the source frame nearest in time (the earlier one on a tie), for
  k < floor(duration * fps), duration running to one source frame after the last.
  `fps` 0 keeps every frame once. A gap over MAX_GAP_S raises VideoError."""
  emitted, held, held_time, start = 0, None, 0.0, None
  for time, frame in frames:
    if start is None:
      start = time
    time -= start
    if held is not None:
      if not fps:
        n = 1
      else:
        if time - held_time > MAX_GAP_S:
          raise VideoError(f'timestamp gap: no frame for {time - held_time:.2f}s after '
                           f'the one at {start + held_time:.2f}s (limit {MAX_GAP_S:g}s, '
                           f'video.MAX_GAP_S)')
        n = _slots_until(emitted, (held_time + time) / 2, fps)
      yield held, n
      emitted += n
    held, held_time = frame, time
  if held is None:
    raise VideoError('no frames decoded')
  if not fps:
    yield held, 1
    return
  duration = held_time + 1.0 / source_fps
  # The tolerance absorbs timestamps rounded to the container's time base.
  count = max(1, int(np.floor(duration * fps + 0.05)))
  yield held, max(0, count - emitted)


def frame_ceiling(size: Optional[Tuple[int, int]]) -> Tuple[int, str]:
  """The most output frames a video may have at output `size` (height, width; None:
  unknown), and the VideoError message past it."""
  by_frames = MAX_FRAMES, f'too long: over {MAX_FRAMES} frames (video.MAX_FRAMES)'
  if size is None or MAX_PIXELS // (size[0] * size[1]) >= MAX_FRAMES:
    return by_frames
  by_pixels = MAX_PIXELS // (size[0] * size[1])
  return by_pixels, (f'too large: over {MAX_PIXELS} pixels, {by_pixels} frames of '
                     f'{size[0]}x{size[1]} (video.MAX_PIXELS)')


def _jpeg_runs(frames: Iterable[Tuple[float, object]], source_fps: float, fps: float,
               to_rgb, *, size_of: Optional[Callable[[object], Tuple[int, int]]] = None,
               keep: Optional[Container[int]] = None, ceilings: bool = True
               ) -> Iterator[Tuple[bytes, int]]:
  """`resample`'s output as (JPEG, n) runs: the next n output frames are that JPEG
  (b'' when none of them is kept). The ceilings count the frames kept (and their
  bytes), not the others; `ceilings` False: no limit on them (a stream that holds
  only a few frames at a time)."""
  if abs(fps - source_fps) < 1e-3:
    fps = 0
  emitted, kept_total, ceiling, jpeg_bytes = 0, 0, None, 0
  for frame, n in _repeats(frames, source_fps, fps):
    if ceilings and ceiling is None:
      ceiling = frame_ceiling(size_of(frame) if size_of else None)
    if not n:
      continue
    kept = n if keep is None else sum(i in keep for i in range(emitted, emitted + n))
    if ceilings and kept_total + kept > ceiling[0]:
      raise VideoError(ceiling[1])
    jpeg = encode_jpeg(to_rgb(frame)) if kept else b''
    jpeg_bytes += kept * len(jpeg)
    if ceilings and jpeg_bytes > MAX_JPEG_BYTES:
      raise VideoError(f'too large: over {MAX_JPEG_BYTES} bytes of JPEG frames '
                       f'(video.MAX_JPEG_BYTES)')
    emitted += n
    kept_total += kept
    yield jpeg, n


def resample(frames: Iterable[Tuple[float, object]], source_fps: float, fps: float,
             to_rgb, *, size_of: Optional[Callable[[object], Tuple[int, int]]] = None,
             keep: Optional[Container[int]] = None) -> List[bytes]:
  """JPEG frames at `fps` from `(time, frame)` pairs in time order, each output frame
  the source frame nearest in time (see `_repeats`). `to_rgb(frame)` gives `[height,
  width, 3]` uint8; each source frame is converted and encoded at most once. `fps`
  0, or the source's own rate, keeps them all.

  `size_of(frame)`: the output (height, width), asked of the first frame for the
  MAX_PIXELS ceiling. `keep`: the output indices to encode; the others are b''.
  More frames or bytes kept than the ceilings raise VideoError before they are made."""
  return list(_expanded(_jpeg_runs(frames, source_fps, fps, to_rgb, size_of=size_of,
                                   keep=keep)))


def _expanded(runs: Iterable[Tuple[bytes, int]]) -> Iterator[bytes]:
  """The frames of `_jpeg_runs`' (JPEG, n) runs: each JPEG n times."""
  for jpeg, n in runs:
    yield from itertools.repeat(jpeg, n)


def _source_rate(stream) -> float:
  """The declared frames per second of `stream`; VideoError outside the bounds."""
  rate = float(stream.average_rate or stream.guessed_rate or Fraction(25))
  if not MIN_SOURCE_FPS <= rate <= MAX_SOURCE_FPS:
    raise VideoError(f'frame rate: {rate:.6g} fps declared, not within '
                     f'{MIN_SOURCE_FPS:g}..{MAX_SOURCE_FPS:g} fps')
  return rate


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


def _expected_end(declared: Optional[float], start: Optional[float],
                  stop: Optional[float]) -> Optional[Tuple[float, float]]:
  """(seconds, tolerance) where the frames read should end by the file's declared
  duration; None if it declares none."""
  if declared is None:
    return None
  end = declared if stop is None else min(stop, declared)
  return end, max(TRUNCATION_TOLERANCE_S, 0.1 * (end - (start or 0.0)))


def _tag_turns(stream) -> int:
  """Counter-clockwise quarter turns that show `stream`'s frames upright by its
  `rotate` tag (clockwise degrees: older mp4 muxers, Matroska's ROTATE); 0 without
  one."""
  tags = {key.lower(): value for key, value in stream.metadata.items()}
  try:
    degrees = float(tags.get('rotate', 0))
  except (TypeError, ValueError):
    return 0
  return -round(degrees / 90) % 4 if math.isfinite(degrees) else 0


def _quarter_turns(frame, tag_turns: int) -> int:
  """Counter-clockwise quarter turns that show `frame` upright: by its display
  matrix (the rotation a phone records; PyAV gives it counter-clockwise, in
  degrees), else by the stream's `rotate` tag (`tag_turns`). Angles between quarter
  turns go to the nearest; mirroring is not undone."""
  degrees = frame.rotation
  if degrees and math.isfinite(degrees):
    return round(degrees / 90) % 4
  return tag_turns


def _converter(short_side: int, tag_turns: int = 0):
  """(size_of, to_rgb) of PyAV frames, turned upright (`_quarter_turns`): every
  frame is converted to the output size of the first one asked about."""
  size = None

  def size_of(frame) -> Tuple[int, int]:
    nonlocal size
    if size is None:
      height, width = frame.height, frame.width
      if _quarter_turns(frame, tag_turns) % 2:
        height, width = width, height
      size = output_size(height, width, short_side)
    return size

  def to_rgb(frame) -> np.ndarray:
    height, width = size_of(frame)
    turns = _quarter_turns(frame, tag_turns)
    if turns % 2:  # converted as stored, then turned
      height, width = width, height
    image = frame.to_ndarray(format='rgb24', width=width, height=height,
                             interpolation='AREA')
    return np.ascontiguousarray(np.rot90(image, turns)) if turns else image
  return size_of, to_rgb


def _file_runs(path: str, resample_to: Resample, *, start: Optional[float] = None,
               stop: Optional[float] = None, only_if_longer: bool = False,
               threads: bool = False, keep: Optional[Container[int]] = None,
               progress: Optional[Progress] = None,
               ceilings: bool = True) -> Tuple[float, Iterator[Tuple[bytes, int]]]:
  """(source rate, `_jpeg_runs` of the file) for `read_video` and `stream_video`
  (their arguments). The file is opened and its rate checked now; the runs decode
  as they are read, and end with the truncation check."""
  container, stream = _open_stream(path)
  try:
    if threads:
      stream.thread_type = 'AUTO'
    rate = _source_rate(stream)
    declared = _declared_duration(container, stream)
    tag_turns = _tag_turns(stream)
  except BaseException:
    container.close()
    raise
  if only_if_longer and declared is not None and start is not None and stop is not None \
      and declared <= stop - start + TRUNCATION_TOLERANCE_S:
    start = stop = None
  expected = _expected_end(declared, start, stop)
  read_until = sum(expected) if expected else math.inf
  size_of, to_rgb = _converter(resample_to.short_side, tag_turns)
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
      if time > read_until:
        break
      if first and seek and time > start + 1.5 / rate:
        raise _SeekMissed  # landed after the segment's first frame
      first = False
      last_time[0] = time
      if progress is not None:
        progress(time, expected and expected[0])
      yield time, frame
    if first and seek:
      raise _SeekMissed  # landed nowhere

  def runs_of(source, seek: bool):
    return _jpeg_runs(selected(source, seek), rate, resample_to.fps, to_rgb,
                      size_of=size_of, keep=keep, ceilings=ceilings)

  def runs():
    import av
    with container:
      try:
        try:
          # _SeekMissed comes before the first run: nothing is yielded twice.
          yield from runs_of(container, seek=bool(start))
        except _SeekMissed:
          # Some containers (raw streams, MPEG-TS) seek badly: read from the start.
          with _open_stream(path)[0] as again:
            yield from runs_of(again, seek=False)
      except av.error.FFmpegError as e:
        raise VideoError(f'decoding failed: {_reason(e)}') from None
    if expected is not None:
      expected_end, tolerance = expected
      decoded_end = last_time[0] + 1.0 / rate
      if decoded_end < expected_end - tolerance:
        raise VideoError(f'truncated: frames end at {decoded_end:.2f}s of '
                         f'{expected_end:.2f}s')
  return rate, runs()


def read_video(path: str, resample_to: Resample, *, start: Optional[float] = None,
               stop: Optional[float] = None, only_if_longer: bool = False,
               threads: bool = False, keep: Optional[Container[int]] = None,
               progress: Optional[Progress] = None) -> Clip:
  """The frames of `path` (or of its segment [start, stop) seconds) at
  `resample_to.fps`, short side `resample_to.short_side`, JPEG-encoded.

  `only_if_longer`: cut the segment only from a file longer than it (a file named
  for a whole YouTube video may hold the whole video or just the clip).
  `keep`: encode only these output frame indices, the others are b'' (`keep=()`
  counts the frames without converting any); the ceilings count only these.
  `progress(seconds, end)` is told each source frame's time, and the declared end
  of what is read (None if the file declares none).
  Frames past the declared end (plus the truncation tolerance) are not read.
  Raises VideoError naming what is wrong with the file."""
  rate, runs = _file_runs(path, resample_to, start=start, stop=stop,
                          only_if_longer=only_if_longer, threads=threads, keep=keep,
                          progress=progress)
  return Clip(list(_expanded(runs)), resample_to.fps or rate)


def stream_video(path: str, resample_to: Resample, *, keep: Optional[Container[int]] = None,
                 progress: Optional[Progress] = None) -> Iterator[bytes]:
  """`read_video(path, resample_to, keep=keep, progress=progress).frames` one at a
  time, as they are decoded: the same frames and the same checks (VideoError when
  the iteration reaches the problem), but no ceiling on the total, which only a
  reader that holds every frame needs. `resample_to.fps` > 0 (the frames' rate)."""
  if resample_to.fps <= 0:
    raise ValueError(f'stream_video needs a frame rate, not {resample_to.fps}')
  _, runs = _file_runs(path, resample_to, keep=keep, progress=progress, ceilings=False)
  yield from _expanded(runs)


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
