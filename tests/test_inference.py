"""`vivit.inference`: a checkpoint loaded for prediction, and the views it cuts from a
video file (the evaluation's, a clip from a given second, a window's), reading only
the frames they use and telling the bars the command passes down."""
import numpy as np
import pytest

import video_files as vf
from vivit import inference, video
from vivit.errors import VideoError


@pytest.fixture(scope='module')
def noise(tmp_path_factory):
  """1 s of noise at 25 fps, 20x24."""
  rng = np.random.RandomState(0)
  frames = (rng.randint(0, 256, (20, 24, 3), np.uint8) for _ in range(25))
  return vf.write_frames(str(tmp_path_factory.mktemp('noise') / 'noise.mp4'), frames)


def test_a_checkpoint_without_a_training_config_takes_the_defaults(two_head_checkpoint):
  setup = inference.load(two_head_checkpoint)
  assert (setup.fps, setup.stride) == (inference.DEFAULT_FPS, inference.DEFAULT_STRIDE)
  assert setup.view() == dict(num_frames=4, stride=2, min_resize=setup.min_resize,
                              crop_size=16)
  assert list(setup.names) == ['verb', 'noun']
  assert inference.load(two_head_checkpoint, fps=10, stride=3).fps == 10


def test_a_clip_from_start_is_the_timeline_window_there(two_head_checkpoint, noise):
  setup = inference.load(two_head_checkpoint)  # 4 frames x stride 2 at 25 fps: 0.32 s
  frames = video.read_video(noise, video.Resample(25, setup.min_resize)).frames
  np.testing.assert_array_equal(inference.clip_at(noise, setup, 0.4),
                                inference.window_view(frames[10:18], setup))


def test_a_video_shorter_than_a_clip_is_named():
  inference.check_holds_a_clip(8, 8, 25)
  with pytest.raises(VideoError, match=r'^0\.28s of video at 25 fps is shorter than one '
                                       r'clip \(8 frames, 0\.32s\)$'):
    inference.check_holds_a_clip(7, 8, 25)


def test_readers_open_and_close_the_bars_they_are_given(two_head_checkpoint, noise):
  opened, closed, told = [], [], []

  def bars(description):
    opened.append(description)
    return (lambda seconds, end: told.append((description, seconds, end)),
            lambda: closed.append(description))
  setup = inference.load(two_head_checkpoint)
  inference.video_views(noise, fps=25, num_clips=1, num_crops=1, bars=bars,
                        **setup.view())
  assert opened == closed == ['counting frames', 'decoding the views']
  # Both passes read the whole file: every source frame's time, and the declared end.
  for description in opened:
    seconds = [s for d, s, _ in told if d == description]
    assert len(seconds) == 25 and seconds == sorted(seconds)
  assert all(end == pytest.approx(1.0, abs=0.05) for _, _, end in told)
  inference.clip_at(noise, setup, 0.4, bars=bars)
  assert opened[2:] == closed[2:] == ['decoding the clip']
  # With or without bars, the same views.
  with_bars = inference.video_views(noise, fps=25, num_clips=2, num_crops=3, bars=bars,
                                    **setup.view())
  count = len(told)
  np.testing.assert_array_equal(
      inference.video_views(noise, fps=25, num_clips=2, num_crops=3, **setup.view()),
      with_bars)
  assert len(told) == count
