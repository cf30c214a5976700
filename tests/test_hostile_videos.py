"""Hostile video files: two frames an hour apart, a stream at 0.001 fps, a long pause,
rates outside 1..1000 fps. Decoding names the problem (or gives bounded frames),
and `prepare` and `predict` on them finish in bounded memory; `predict` decodes only
the frames of its views. Phone videos (a display matrix asking for a rotation) are
decoded upright, frames too wide for a JPEG named, a video past the frame ceiling
still predicted (its frames are counted, not kept), and class names with `$...$`
drawn as given."""
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import video_files as vf
from helpers import ROOT, tiny_model_config
from test_prepare import load
from vivit import evaluate, explain, inference, predict, video
from vivit.errors import VideoError
from vivit.input import sampling
from vivit.workdir import save_class_names

# Peak resident memory (measured): `prepare` of two small videos ~0.7 GB, of two
# 1000-frame 320x240 ones 1.2 GB; `predict` with a tiny model ~0.9 GB; this module's
# prepare-then-predict run ~0.9 GB. The hostile files made `prepare` pass 8 GB
# before the decoding ceilings.
PEAK_RSS_MB = 2000
# A run past this is killed (the test then fails) before it can fill the machine.
KILL_RSS_MB = 3000

# name -> (frame times in seconds, declared fps, size, noise, what read_video says)
HOSTILE = {
    'hour_gap': ([0, 3600], 25, (240, 320), True, r'frame rate: 0\.000555549 fps'),
    'slow': ([0, 1000, 2000], Fraction(1, 1000), (240, 320), True, r'frame rate: 0\.001 fps'),
    # 25 fps on each side of a 30 s pause: the average rate is a sane 3 fps.
    'pause': ([i / 25 for i in range(50)] + [32 + i / 25 for i in range(50)], 25, (48, 64),
              False, r'timestamp gap: no frame for 30\.04s after the one at 1\.96s'),
}


def write_hostile(directory, name):
  times, fps, size, noise, _ = HOSTILE[name]
  return vf.write_timed(os.path.join(directory, f'{name}.mp4'), times, fps, size, noise)


@pytest.fixture(scope='module')
def hostile(tmp_path_factory):
  """{name: path} of the HOSTILE files and a normal 'ok' one (1 s at 25 fps)."""
  root = str(tmp_path_factory.mktemp('hostile'))
  paths = {name: write_hostile(root, name) for name in HOSTILE}
  paths['ok'] = vf.write_video(os.path.join(root, 'ok.mp4'), 25, 25, (48, 64))
  return paths


def memory_mb(pid, field):
  """`field` of /proc/PID/status ('VmRSS' now, 'VmHWM' the peak) in MB; 0 if gone."""
  try:
    with open(f'/proc/{pid}/status') as f:
      return next(int(l.split()[1]) for l in f if l.startswith(field + ':')) / 1024
  except (OSError, StopIteration):
    return 0.0


def run_measured(args, timeout=300):
  """(exit status, stdout, stderr, peak RSS in MB) of a subprocess: the largest peak
  (VmHWM) of it and its descendants (the decoding workers), polled while they run;
  all killed past KILL_RSS_MB or `timeout`. (Not `getrusage`: Linux counts into
  ru_maxrss the memory of the forking parent, here a pytest worker of several GB.)"""
  import psutil
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  process = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
  deadline = time.time() + timeout
  peaks = {}
  # Pipes are read at the end: the commands here print a few lines only.
  while process.poll() is None:
    try:
      tree = [process.pid] + [p.pid for p in psutil.Process(process.pid).children(True)]
    except psutil.NoSuchProcess:
      continue
    for pid in tree:
      peaks[pid] = max(peaks.get(pid, 0.0), memory_mb(pid, 'VmHWM'))
    if sum(memory_mb(pid, 'VmRSS') for pid in tree) > KILL_RSS_MB or time.time() > deadline:
      for pid in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
          psutil.Process(pid).kill()
    time.sleep(0.02)
  peak = max(peaks.values(), default=0.0)
  print(f'peak RSS {peak:.0f} MB')
  return process.returncode, process.stdout.read(), process.stderr.read(), peak


def grey_frames(n, size=(2, 2)):
  return [(i / 25, np.full((*size, 3), i, np.uint8)) for i in range(n)]


def counting_jpegs(monkeypatch):
  """A list that grows by one for each JPEG that the reader encodes."""
  made = []
  encode = video.encode_jpeg
  monkeypatch.setattr(video, 'encode_jpeg', lambda frame: made.append(1) or encode(frame))
  return made


def test_declared_rates_outside_1_to_1000_fps_are_named(tmp_path):
  grey = dict(size=(48, 64), noise=False)
  slow = vf.write_timed(str(tmp_path / 'slow.mp4'), [0, 2, 4, 6], 0.5, **grey)
  fast = vf.write_timed(str(tmp_path / 'fast.mp4'), [i / 5000 for i in range(20)], 5000,
                        time_base=Fraction(1, 5000), **grey)
  for path, rate in ((slow, '0.5'), (fast, '5000')):
    with pytest.raises(VideoError, match=rf'^frame rate: {rate} fps declared, not within '
                                         r'1\.\.1000 fps$'):
      video.read_video(path, video.Resample(25, 32))
  fine = vf.write_timed(str(tmp_path / 'fine.mp4'), [0, 0.5, 1, 1.5], 2, **grey)
  assert len(video.read_video(fine, video.Resample(25, 32)).frames) == 50


def test_gaps_up_to_the_limit_repeat_the_frame_longer_ones_are_named(monkeypatch):
  made = counting_jpegs(monkeypatch)
  frames = grey_frames(2) + [(4.08, np.full((2, 2, 3), 9, np.uint8))]
  # 0, 0.04 and a 4.04 s gap (from 30 fps to 25): frame 1 until the midpoint,
  # then the last frame.
  out = video.resample(frames, 30, 25.0, lambda f: f)
  assert len(out) == 102 and len(made) == 3
  assert out[1:52] == [out[1]] * 51 and out[52] != out[1]
  with pytest.raises(VideoError, match=r'^timestamp gap: no frame for 6\.00s after the one '
                                       r'at 0\.04s \(limit 5s, video\.MAX_GAP_S\)$'):
    video.resample(grey_frames(2) + [(6.04, None)], 30, 25.0, lambda f: f)
  # Kept at the source rate (fps 0) nothing is invented: no limit.
  assert len(video.resample(grey_frames(2) + [(60.0, np.zeros((2, 2, 3), np.uint8))],
                            25, 0, lambda f: f)) == 3


@pytest.mark.parametrize('name', sorted(HOSTILE))
def test_hostile_files_are_named_video_errors(hostile, name, monkeypatch):
  made = counting_jpegs(monkeypatch)
  for keep in (None, ()):  # prepare's read, predict's counting pass
    with pytest.raises(VideoError, match='^' + HOSTILE[name][-1]):
      video.read_video(hostile[name], video.Resample(25, 32), keep=keep)
  assert len(made) <= 49  # the pause file's frames before the gap, by prepare's read


def test_ceilings_on_frames_pixels_and_bytes_are_named(hostile, monkeypatch):
  ok = hostile['ok']  # 25 frames of 32x43 at short side 32
  resample = video.Resample(25, 32)
  assert len(video.read_video(ok, resample).frames) == 25
  for name, value, message in (
      ('MAX_FRAMES', 24, r'too long: over 24 frames \(video\.MAX_FRAMES\)'),
      ('MAX_PIXELS', 24 * 32 * 43, r'too large: over 33024 pixels, 24 frames of 32x43 '
                                   r'\(video\.MAX_PIXELS\)'),
      ('MAX_JPEG_BYTES', 5000, r'too large: over 5000 bytes of JPEG frames')):
    with monkeypatch.context() as patch:
      patch.setattr(video, name, value)
      with pytest.raises(VideoError, match='^' + message):
        video.read_video(ok, resample)
  # Repeats past a ceiling are refused before the frame is even encoded.
  made = counting_jpegs(monkeypatch)
  monkeypatch.setattr(video, 'MAX_GAP_S', 1e9)
  with pytest.raises(VideoError, match=r'^too long: over 18000 frames'):
    video.resample(grey_frames(1) + [(3600.0, None)], 30, 25.0, lambda f: f)
  assert not made


def test_predict_views_equal_the_full_decode_from_their_frames_only(tmp_path, monkeypatch):
  rng = np.random.RandomState(1)
  frames = (rng.randint(0, 256, (36, 44, 3), np.uint8) for _ in range(45))
  path = vf.write_frames(str(tmp_path / 'noise.mp4'), frames, fps=vf.NTSC)
  made = counting_jpegs(monkeypatch)
  for fps, num_frames, stride, clips, crops in ((25, 4, 2, 1, 1), (25, 4, 2, 4, 3),
                                                (12, 8, 3, 2, 3), (25, 32, 2, 3, 1)):
    view = dict(num_frames=num_frames, stride=stride, min_resize=24, crop_size=16,
                num_clips=clips, num_crops=crops)
    clip = video.read_video(path, video.Resample(fps=fps, short_side=24))
    expected = sampling.eval_views(tf.constant(clip.frames), **view).numpy()
    needed = np.unique(sampling.eval_clip_indices(len(clip.frames), num_frames, stride,
                                                    clips))
    del made[:]
    np.testing.assert_array_equal(inference.video_views(path, fps=fps, **view), expected)
    assert len(made) <= len(needed)  # 1x1: 4 of 37 frames
  # Progress: every source frame's time, in order, and the declared end (45 / 29.97 s).
  told = []
  video.read_video(path, video.Resample(fps=25, short_side=24), keep=(),
                   progress=lambda seconds, end: told.append((seconds, end)))
  assert len(told) == 45 and [t for t, _ in told] == sorted(t for t, _ in told)
  assert [end for _, end in told] == [pytest.approx(float(45 / vf.NTSC), abs=0.05)] * 45


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  """A params directory of a tiny random model (4 frames of 16x16)."""
  import jax
  from vivit import checkpoints
  from vivit.models import init_params
  config = tiny_model_config()
  rng = np.random.RandomState(0)
  shapes = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  params = jax.tree_util.tree_map(
      lambda s: 0.3 * rng.standard_normal(s.shape).astype(s.dtype), shapes)
  path = str(tmp_path_factory.mktemp('checkpoint') / 'params')
  checkpoints.save_params(path, config, params)
  return path


# Prepare, then predict on each video, in one process (TensorFlow loads once).
PREPARE_THEN_PREDICT = '''
import contextlib, io, json, sys
from vivit import predict, prepare

def run(main, argv):
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    status = main(argv)
  return [status, out.getvalue(), err.getvalue()]

videos, data_dir, checkpoint = sys.argv[1:4]
result = {'prepare': run(prepare.main, ['video_folder', '--videos', videos, '--data_dir',
                                        data_dir, '--short_side', '240'])}
result['prepare_peak_mb'] = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024
for path in sys.argv[4:]:
  result[path] = run(predict.main, ['--checkpoint', checkpoint, '--video', path,
                                    '--views', '4x3'])
print(json.dumps(result))
'''


def test_prepare_and_predict_on_hostile_videos_in_bounded_memory(tmp_path, checkpoint):
  videos = tmp_path / 'videos'
  paths = {name: write_hostile(str(videos / 'train' / 'bad'), name) for name in HOSTILE}
  # The source size (240x320): every repeated frame would be a 60 KB noise JPEG.
  paths['ok'] = vf.write_video(str(videos / 'train' / 'fine' / 'ok.mp4'), 25, 25, (240, 320))
  vf.write_video(str(videos / 'validation' / 'fine' / 'ok.mp4'), 25, 25, (240, 320))
  status, out, err, peak = run_measured(
      [sys.executable, '-c', PREPARE_THEN_PREDICT, str(videos), str(tmp_path / 'tfds'),
       checkpoint] + list(paths.values()))
  assert status == 0, err[-3000:]
  result = json.loads(out.strip().split('\n')[-1])
  print(f'prepare: peak RSS {result["prepare_peak_mb"]:.0f} MB')
  assert result['prepare'][0] == 0, result['prepare'][2][-3000:]
  with open(tmp_path / 'tfds' / 'video_folder' / 'prepare_report.json') as f:
    report = json.load(f)
  assert report['examples'] == {'train': 1, 'validation': 1}
  skipped = {os.path.basename(s['id']): s['reason'] for s in report['skipped']}
  assert sorted(skipped) == sorted(f'{name}.mp4' for name in HOSTILE)
  status, lines, errors = result[paths['ok']]
  assert status == 0 and len(lines.strip().split('\n')) == 5, errors
  for name in HOSTILE:
    assert re.match(HOSTILE[name][-1], skipped[f'{name}.mp4'])
    status, lines, errors = result[paths[name]]
    assert status == 2 and not lines
    assert errors.startswith(f'error: {paths[name]}: ') and errors.count('\n') == 1
    assert re.search(HOSTILE[name][-1], errors)
  assert peak < PEAK_RSS_MB


def upright_pattern(height=18, width=24):
  """An asymmetric picture: a white block top left, a grey bar bottom right (on
  even pixels, so that H.264's half-resolution colour stores it exactly)."""
  image = np.full((height, width, 3), 16, np.uint8)
  image[:6, :8] = 235
  image[-4:, width // 2:] = 128
  return image


def write_phone_video(path, turns, num_frames=12):
  """`upright_pattern` as a phone records it: frames stored turned `turns` quarter
  turns counter-clockwise, the stream's display matrix telling players to turn them
  back (90 x `turns` degrees clockwise: a phone's `rotate=90` for turns=1)."""
  stored = np.rot90(upright_pattern(), turns)
  return vf.write_frames(path, [stored] * num_frames, rotation=-90 * turns)


def write_tagged_video(path, num_frames=12):
  """`upright_pattern` stored a quarter turn counter-clockwise in Matroska, with no
  display matrix but the tag older muxers wrote: rotate=90 (turn it clockwise)."""
  import av
  stored = np.ascontiguousarray(np.rot90(upright_pattern(), 1))
  with av.open(path, 'w', format='matroska') as container:
    stream = container.add_stream('libx264', rate=25)
    stream.height, stream.width = stored.shape[:2]
    stream.options = {'qp': '0', 'preset': 'ultrafast'}
    stream.metadata['rotate'] = '90'
    frame = av.VideoFrame.from_ndarray(stored, format='rgb24')
    for packet in [p for _ in range(num_frames) for p in stream.encode(frame)]:
      container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path


def decoded_frames(clip):
  return np.stack([np.asarray(Image.open(io.BytesIO(jpeg))) for jpeg in clip.frames])


@pytest.mark.parametrize('turns', [1, 2, 3, 'tag'])
def test_phone_videos_decode_upright(tmp_path, turns):
  path = (write_tagged_video(str(tmp_path / 'phone.mkv')) if turns == 'tag' else
          write_phone_video(str(tmp_path / 'phone.mp4'), turns))
  frames = decoded_frames(video.read_video(path, video.Resample(25, 0)))
  assert frames.shape == (12, 18, 24, 3)
  # JPEG blurs the edges a little: the pattern, not the exact pixels.
  assert np.abs(frames.astype(int) - upright_pattern()).mean() < 3
  streamed = list(video.stream_video(path, video.Resample(25, 18)))
  assert decoded_frames(video.Clip(streamed, 25)).shape == (12, 18, 24, 3)


def test_prepare_turns_phone_videos_and_names_frames_too_wide(tmp_path):
  clips = tmp_path / 'clips'
  write_phone_video(str(clips / 'phone.mp4'), 1)
  vf.write_frames(str(clips / 'upright.mp4'), [upright_pattern()] * 12)
  # 2x8192 at short side 32 would be a 32x131072 JPEG.
  vf.write_frames(str(clips / 'wide.mp4'), [np.zeros((2, 8192, 3), np.uint8)] * 4)
  listing = vf.write_csv(str(tmp_path / 'list.csv'), ['path', 'label', 'split'],
                         [['phone.mp4', 'a', 'train'], ['wide.mp4', 'a', 'train'],
                          ['upright.mp4', 'a', 'validation']])
  report = vf.run_prepare('video_folder', str(clips), listing, tmp_path / 'tfds')
  assert report['examples'] == {'train': 1, 'validation': 1}
  assert [(s['id'], s['reason']) for s in report['skipped']] == [(
      'wide.mp4', 'frame size: 2x8192 (height x width) at short side 32 is 32x131072, '
                  'over the 65500 pixels a side of a JPEG frame can have '
                  '(video.MAX_JPEG_SIDE)')]
  _, examples = load('video_folder', tmp_path / 'tfds')
  phone, upright = examples['phone.mp4']['video'], examples['upright.mp4']['video']
  assert phone.shape == upright.shape == (12, 32, 43, 3)
  assert np.abs(phone.astype(int) - upright).mean() < 3


def test_predict_turns_phone_videos_and_names_frames_too_wide(tmp_path, checkpoint,
                                                              capsys):
  phone = write_phone_video(str(tmp_path / 'phone.mp4'), 3, num_frames=24)
  upright = vf.write_frames(str(tmp_path / 'upright.mp4'), [upright_pattern()] * 24)
  view = dict(fps=25, num_frames=4, stride=2, min_resize=18, crop_size=16, num_clips=1,
              num_crops=3)
  np.testing.assert_array_equal(inference.video_views(phone, **view),
                                inference.video_views(upright, **view))
  printed = []
  for path in (phone, upright):
    assert predict.main(['--checkpoint', checkpoint, '--video', path]) == 0
    printed.append(capsys.readouterr().out)
  assert printed[0] == printed[1] and len(printed[0].strip().split('\n')) == 5
  wide = vf.write_frames(str(tmp_path / 'wide.mp4'), [np.zeros((2, 8192, 3), np.uint8)] * 4)
  assert predict.main(['--checkpoint', checkpoint, '--video', wide]) == 2
  assert capsys.readouterr().err == (
      f'error: {wide}: frame size: 2x8192 (height x width) at short side 18 is 18x73728, '
      f'over the 65500 pixels a side of a JPEG frame can have (video.MAX_JPEG_SIDE)\n')


def test_predict_counts_the_frames_past_the_ceiling_it_does_not_keep(
    tmp_path, checkpoint, capsys, monkeypatch):
  # 13 minutes at 1 fps: 19,500 frames at predict's 25 fps, over video.MAX_FRAMES.
  frames = (np.full((16, 16, 3), vf.frame_level(i), np.uint8) for i in range(780))
  path = vf.write_frames(str(tmp_path / 'long.mp4'), frames, fps=1)
  with pytest.raises(VideoError, match=r'^too long: over 18000 frames \(video\.MAX_FRAMES\)$'):
    video.read_video(path, video.Resample(25, 18))  # preparation keeps every frame
  made = counting_jpegs(monkeypatch)
  assert predict.main(['--checkpoint', checkpoint, '--video', path]) == 0
  assert len(capsys.readouterr().out.strip().split('\n')) == 5
  assert len(made) <= 4  # the 1x1 view's 4 frames


# Names that matplotlib would read as mathtext (each fails to parse) or LaTeX.
MATH_NAMES = {r'$\oops{$': [r'$\frac{$', r'a$^$b'],
              'noun': [r'$\sqrt{$', '50$ & 100%_#', r'\$x$']}


def test_names_are_drawn_as_given(tmp_path, checkpoint, capsys):
  checkpoint = shutil.copytree(checkpoint, str(tmp_path / 'params'))
  save_class_names(checkpoint, MATH_NAMES)  # two heads
  # Wide frames (18x576 at the model's short side) shown in the timeline too.
  wide = vf.write_video(str(tmp_path / 'wide.mp4'), 24, 25, (16, 512))
  out = str(tmp_path / 'timeline')
  assert predict.main(['--checkpoint', checkpoint, '--video', wide, '--timeline', out]
                      ) == 0, capsys.readouterr().err
  with Image.open(out + '.png') as image:
    assert image.width >= 800 and image.height >= 200
  # The other pictures of names, drawn directly (no model to run).
  tokens = np.full((2, 2, 2), 1 / 8, np.float32)
  clip = np.zeros((4, 16, 16, 3), np.uint8)
  explain.write_png(str(tmp_path / 'explain.png'), explain.Explanation(
      clip, tokens, [0, 1, 2, 3], 'noun', MATH_NAMES['noun'][0], 0.5, 'rollout', 0.08))
  evaluate.plot_confusion(np.eye(3, dtype=int), MATH_NAMES['noun'],
                          str(tmp_path / 'confusion.png'))
  for name in ('explain.png', 'confusion.png'):
    assert os.path.getsize(tmp_path / name) > 1000
