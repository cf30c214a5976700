"""`vivit.video`: resampling by nearest timestamp in one step per source frame, sizes,
and reading no further than the file's declared end (hostile files, the ceilings
and segments in every container: test_hostile_videos.py, test_prepare.py)."""
import numpy as np
import pytest

import video_files as vf
from vivit import video


def test_the_short_side_is_resized_and_the_aspect_kept():
  assert video.output_size(480, 640, 256) == (256, 341)
  assert video.output_size(640, 480, 256) == (341, 256)
  assert video.output_size(480, 640, 0) == (480, 640)  # 0 keeps the source size


def frame_by_frame(frames, source_fps, fps):
  """Source frame indices of `video.resample`'s output, one output frame per step."""
  out, held, held_time = [], None, 0.0
  for seconds, frame in frames:
    if held is not None:
      while len(out) / fps <= (held_time + seconds) / 2 + 1e-9:
        out.append(held)
    held, held_time = frame, seconds
  while len(out) < max(1, int(np.floor((held_time + 1 / source_fps) * fps + 0.05))):
    out.append(held)
  return out


def test_resample_repeats_frames_as_a_frame_by_frame_loop(monkeypatch):
  """The repeat counts, computed in one step per source frame, are those of the loop
  that appended one output frame at a time (the resampling before the ceilings)."""
  monkeypatch.setattr(video, 'encode_jpeg', lambda i: bytes([i]))
  rng = np.random.RandomState(0)
  for _ in range(300):
    source_fps = rng.choice([23.976, 25, 29.97, 50, 59.94, 8])
    fps = rng.choice([24, 12, 7.5])
    steps = rng.uniform(0.2, 3, rng.randint(1, 40)) / source_fps
    times = np.round(np.cumsum(steps) - steps[0], rng.choice([3, 9]))
    frames = [(float(t), i) for i, t in enumerate(times)]
    got = video.resample(frames, source_fps, fps, lambda i: i)
    assert [b[0] for b in got] == frame_by_frame(frames, source_fps, fps)


def test_frames_past_the_declared_end_are_not_read(tmp_path, monkeypatch):
  path = vf.write_video(str(tmp_path / 'two_seconds.mp4'), 50, 25, (48, 64))
  monkeypatch.setattr(video, '_declared_duration', lambda container, stream: 0.5)
  clip = video.read_video(path, video.Resample(25, 32))
  # Source frames up to 0.5 s + the 1 s tolerance: 38 at 25 fps, not 50.
  assert len(clip.frames) == 38



def test_a_stream_needs_a_frame_rate(tmp_path):
  path = vf.write_video(str(tmp_path / 'a.mp4'), 5, 25, (48, 64))
  with pytest.raises(ValueError, match=r'^stream_video needs a frame rate, not 0$'):
    next(video.stream_video(path, video.Resample(fps=0, short_side=32)))
