"""`vivit-predict --timeline`: windows over a decoded stream, their files, their
errors, the same probabilities as windows cut from a fully decoded video, bounded
memory over a 10-minute video, and (slow) a trained model's timeline of a video
made of synthetic_motion clips of known classes."""
import csv
import json
import os
import re
import sys

import numpy as np
import pytest
from PIL import Image

import video_files as vf
from helpers import HEADS
from test_hostile_videos import run_measured
from vivit import inference, predict, step, timeline
from vivit.datasets import synthetic
from vivit.errors import VideoError
from vivit.video import Resample, read_video, stream_video

# Peak RSS of a timeline run over 10 minutes of video may exceed one over 30 s by at
# most this. Measured on 2 cores: 868 MB over 30 s, 834 MB over 10 minutes.
GROWTH_MB = 60
LONG_S, SHORT_S, LONG_FPS = 600, 30, 8


@pytest.fixture(scope='module')
def noise_video(tmp_path_factory):
  """3 s of random noise at NTSC rate, 36x44."""
  rng = np.random.RandomState(0)
  frames = (rng.randint(0, 256, (36, 44, 3), np.uint8) for _ in range(90))
  return vf.write_frames(str(tmp_path_factory.mktemp('noise') / 'noise.mp4'), frames,
                         fps=vf.NTSC)


def test_windows_gather_the_frames_they_keep():
  windows = timeline.Windows(span=8, stride=3, hop=5, fps=10)
  assert windows.seconds(0) == (0, 0.8) and windows.seconds(3) == (1.5, 2.3)
  used = {k * 5 + j for k in range(20) for j in range(0, 8, 3)}
  assert [i for i in range(90) if i in windows] == sorted(i for i in used if i < 90)
  assert timeline.windows_of(8, 2, None, 25).hop == 16  # default: one clip
  assert timeline.windows_of(8, 2, 0.01, 25).hop == 1  # at least one frame
  with pytest.raises(ValueError, match='hop > 0'):
    timeline.windows_of(8, 2, 0, 25)


def test_window_frames_hold_one_span_and_refuse_a_short_video():
  windows = timeline.Windows(span=4, stride=2, hop=3, fps=2)
  cut = list(timeline.window_frames(iter(range(12)), windows))
  assert cut == [(0, [0, 1, 2, 3]), (1, [3, 4, 5, 6]), (2, [6, 7, 8, 9])]
  with pytest.raises(VideoError, match=r'1\.50s of video at 2 fps is shorter '
                     r'than one clip \(4 frames, 2\.00s\)'):
    list(timeline.window_frames(iter(range(3)), windows))


def test_evenly_spaced_keeps_a_bounded_even_subset():
  kept = timeline.EvenlySpaced(4)
  for i in range(1000):
    kept.offer(i, str(i))
    assert len(kept.items) <= 8
  indices = [i for i, _ in kept.items]
  assert len(set(np.diff(indices))) == 1 and indices[0] == 0 and indices[-1] > 800
  assert len(kept.pick(4)) == 4


def test_smoothing_averages_neighbouring_windows():
  p = np.eye(4)[[0, 0, 1, 1, 1]]
  np.testing.assert_array_equal(timeline.smoothed(p, 1), p)
  s = timeline.smoothed(p, 3)
  np.testing.assert_allclose(s[0], [1, 0, 0, 0])  # the first: itself and the next
  np.testing.assert_allclose(s[1], [2 / 3, 1 / 3, 0, 0])
  np.testing.assert_allclose(s.sum(1), 1)


def test_stream_video_yields_read_video_frames(noise_video):
  keep = timeline.Windows(span=8, stride=2, hop=5, fps=10)
  resample = Resample(fps=10, short_side=24)
  assert list(stream_video(noise_video, resample, keep=keep)) == \
      read_video(noise_video, resample, keep=keep).frames


def test_stream_video_yields_as_it_reads(tmp_path):
  """The first window of a 60 s video comes out when only its first seconds have been
  read: the timeline streams (and `window_frames` holds one span), so its memory does
  not grow with the video (the slow tests measure the RSS)."""
  video = write_long_video(str(tmp_path / 'long.mp4'), 60)
  read = []
  windows = timeline.Windows(span=16, stride=2, hop=16, fps=LONG_FPS)
  stream = stream_video(video, Resample(LONG_FPS, 32), keep=windows,
                        progress=lambda seconds, _: read.append(seconds))
  first = next(timeline.window_frames(stream, windows))
  assert first[0] == 0 and len(first[1]) == 16
  assert 1.8 <= max(read) < 5, max(read)  # 2 s of a 60 s video, and a little more
  assert len(list(stream)) > 0 and max(read) > 59


def test_timeline_equals_windows_cut_from_the_full_decode(two_head_checkpoint,
                                                          noise_video):
  from vivit.models import build_model
  setup = inference.load(two_head_checkpoint, fps=10, stride=2)
  result = timeline.timeline(setup, noise_video, hop=0.3, batch=3)
  frames = read_video(noise_video, Resample(10, setup.min_resize)).frames
  assert len(frames) == 30
  # 8-frame windows every 3 frames of 30: starts 0, 3, ..., 21.
  np.testing.assert_allclose(result.starts, np.arange(0, 22, 3) / 10)
  np.testing.assert_allclose(result.ends, result.starts + 0.8)
  views = np.stack([inference.window_view(frames[s:s + 8], setup) for s in range(0, 22, 3)])
  logits = build_model(setup.model_config).apply({'params': setup.params}, views)
  expected = step.head_probabilities(np.asarray(logits), setup.names)
  for head in HEADS:
    np.testing.assert_allclose(result.probabilities[head], expected[head], atol=1e-5)
  assert len(result.thumbnails) == 8
  smooth = timeline.timeline(setup, noise_video, hop=0.3, batch=8, smooth=3)
  np.testing.assert_allclose(smooth.probabilities['noun'],
                             timeline.smoothed(expected['noun'], 3), atol=1e-5)


def test_timeline_files(two_head_checkpoint, noise_video, tmp_path, capsys):
  out = str(tmp_path / 'out' / 'noise')
  os.makedirs(os.path.dirname(out))
  assert predict.main(['--checkpoint', two_head_checkpoint, '--video', noise_video,
                       '--fps', '10',
                       '--hop', '0.5', '--timeline', out, '--top', '2',
                       '--smooth', '2']) == 0
  assert capsys.readouterr().out.split() == [out + '.csv', out + '.json', out + '.png']
  with open(out + '.csv') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['start_s', 'end_s', 'verb_class_1', 'verb_probability_1',
                     'verb_class_2', 'verb_probability_2', 'noun_class_1',
                     'noun_probability_1', 'noun_class_2', 'noun_probability_2']
  # 30 frames at 10 fps, windows of 4 x stride 2 every 5 frames: starts 0 .. 2.0 s.
  assert [(r[0], r[1]) for r in rows[1:]] == [(f'{s / 10:.3f}', f'{s / 10 + 0.8:.3f}')
                                              for s in range(0, 23, 5)]
  with open(out + '.json') as f:
    result = json.load(f)
  assert result['window'] == {'frames': 8, 'stride': 2, 'seconds': 0.8}
  assert (result['fps'], result['hop_seconds'], result['smooth']) == (10, 0.5, 2)
  assert len(result['windows']) == len(rows) - 1
  for window, row in zip(result['windows'], rows[1:]):
    assert window['start'] == float(row[0])
    verb, noun = window['top']['verb'], window['top']['noun']
    assert [name for name, _ in verb] == [row[2], row[4]] and len(noun) == 2
    assert {name for name, _ in noun} <= set(HEADS['noun'])
    assert verb[0][1] >= verb[1][1] and verb[0][1] + verb[1][1] == pytest.approx(1, abs=1e-4)
  with Image.open(out + '.png') as image:
    assert image.width >= 800 and image.height >= 200


@pytest.mark.parametrize('args, message', [
    (['--hop', '0'], r"argument --hop: '0' is not a finite number > 0 and <= 1e\+06"),
    (['--hop', '-1'], r"argument --hop: '-1' is not"),
    (['--views', '4x3'], r'--timeline with --views'),
    (['--fps', '2'], r'3\.00s of video at 2 fps is shorter than one clip '
                     r'\(8 frames, 4\.00s\)'),
    (['--smooth', '0'], r"argument --smooth: '0' is not a whole number from 1"),
])
def test_bad_arguments_are_one_line_errors(two_head_checkpoint, noise_video, tmp_path,
                                           capsys,
                                           args, message):
  if args[0] != '--fps':  # that one: 3 s at 2 fps, a clip of 8 frames
    args = ['--fps', '10'] + args
  assert predict.main(['--checkpoint', two_head_checkpoint, '--video', noise_video,
                       '--timeline',
                       str(tmp_path / 'out')] + args) == 2
  error = capsys.readouterr().err
  assert error.startswith('error: ') and error.count('\n') == 1
  assert re.search(message, error), error
  assert not os.path.exists(tmp_path / 'out.csv')


def test_timeline_options_need_timeline(two_head_checkpoint, noise_video, capsys):
  assert predict.main(['--checkpoint', two_head_checkpoint, '--video', noise_video,
                       '--hop', '1']) == 2
  assert capsys.readouterr().err == 'error: --hop: only with --timeline\n'


def write_long_video(path, seconds, fps=LONG_FPS):
  """`seconds` of synthetic_motion clips (32x32, 16 frames each) at `fps`."""
  rng = np.random.default_rng(0)
  clips = (synthetic.render_clip(i % 10, rng) for i in range(seconds * fps // 16))
  return vf.write_frames(path, (frame for clip in clips for frame in clip), fps=fps)


TIMELINE_RUN = '''
import sys
from vivit import predict
sys.exit(predict.main(sys.argv[1:]))
'''


# Slow (both): generating and decoding minutes of video takes 40 s or more.
@pytest.mark.slow
@pytest.mark.parametrize('seconds', [150, LONG_S])
def test_a_long_video_in_bounded_memory(two_head_checkpoint, tmp_path, seconds):
  """Peak RSS of a timeline over `seconds` (10 minutes in the slow run) against one
  over 30 s: the stream holds one window and one batch, whatever the length."""
  peaks = {}
  for length in (SHORT_S, seconds):
    video = write_long_video(str(tmp_path / f'{length}.mp4'), length)
    out = str(tmp_path / str(length))
    status, _, err, peaks[length] = run_measured(
        [sys.executable, '-c', TIMELINE_RUN, '--checkpoint', two_head_checkpoint,
         '--video', video,
         '--fps', str(LONG_FPS), '--timeline', out])
    assert status == 0, err[-3000:]
    with open(out + '.json') as f:
      windows = json.load(f)['windows']
    # One-second windows (4 frames x stride 2 at 8 fps) tiling the video.
    assert len(windows) == length and windows[-1]['end'] == length
  print(f'peak RSS: {peaks[SHORT_S]:.0f} MB over {SHORT_S} s, {peaks[seconds]:.0f} MB '
        f'over {seconds} s')
  assert peaks[seconds] - peaks[SHORT_S] < GROWTH_MB


# --- A trained model's timeline (slow: trains on synthetic_motion) ----------------

# Every class twice, in no order: 40 s of 2 s segments.
SEGMENT_CLASSES = [4, 6, 2, 7, 3, 5, 9, 0, 8, 1, 7, 0, 5, 9, 1, 3, 6, 2, 8, 4]
SEGMENT_FPS = 8  # a 16-frame clip: 2 s segments, the model's 8 x stride 2 window


@pytest.mark.slow
def test_a_trained_timeline_names_each_segment(trained_synthetic, tmp_path):
  rng = np.random.default_rng(7)
  frames = np.concatenate([synthetic.render_clip(c, rng) for c in SEGMENT_CLASSES])
  video = vf.write_frames(str(tmp_path / 'segments.mp4'), frames, fps=SEGMENT_FPS)
  setup = inference.load(trained_synthetic, fps=SEGMENT_FPS)
  result = timeline.timeline(setup, video, hop=0.25)
  segment_s = synthetic.NUM_FRAMES / SEGMENT_FPS
  inside = [k for k, (start, end) in enumerate(zip(result.starts, result.ends))
            if start // segment_s == (end - 1e-6) // segment_s]
  assert len(inside) == len(SEGMENT_CLASSES)
  best = result.probabilities['label'].argmax(1)
  right = [best[k] == SEGMENT_CLASSES[int(result.starts[k] // segment_s)] for k in inside]
  # Measured: 17 of 20 (3000 steps; 1500 steps, 87 % validation top-1: 14 of 20).
  print(f'top class right in {sum(right)} of {len(right)} windows inside a segment')
  assert np.mean(right) >= 0.8
  paths = timeline.write(str(tmp_path / 'segments'), result, top=3)
  assert all(os.path.getsize(p) for p in paths)
