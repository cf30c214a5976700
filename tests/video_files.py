"""Small real video files and official-format annotation files for the dataset tests.

Frame i of every test video is a flat grey of level `frame_level(i)`, so a decoded
frame tells which source frame it came from."""
import csv
import json
import os
from fractions import Fraction

import numpy as np
from PIL import Image

from vivit import prepare
from vivit.demo_video import write_frames  # the library's writer: lossless H.264

NTSC = Fraction(30000, 1001)


CYCLE = 42  # frame levels repeat after this many frames


def frame_level(i: int) -> int:
  """Grey level of frame i: 5 levels apart, inside video's 16..235 range."""
  return 20 + 5 * (i % CYCLE)


def level_index(level: float) -> int:
  """The source frame index modulo CYCLE whose level is nearest `level`."""
  return int(np.argmin([abs(frame_level(i) - level) for i in range(CYCLE)]))


def write_video(path, num_frames=12, fps=25, size=(48, 64), codec='libx264',
                container_format=None):
  """An mp4 (H.264) or webm (VP9) of flat grey frames; `size` is (height, width),
  odd sizes allowed; `container_format` e.g. 'mpegts' or 'h264' (raw, no
  timestamps)."""
  height, width = size
  frames = (np.full((height, width, 3), frame_level(i), np.uint8) for i in range(num_frames))
  return write_frames(path, frames, fps, codec, container_format)


def write_audio_only(path):
  import av
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with av.open(path, 'w', format='mp4') as container:
    stream = container.add_stream('aac', rate=16000)
    samples = np.zeros((1, 1024 * 8), np.float32)
    frame = av.AudioFrame.from_ndarray(samples, format='fltp', layout='mono')
    frame.sample_rate = 16000
    for packet in stream.encode(frame):
      container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path


def write_bad(path, kind):
  """'empty' (0 bytes), 'corrupt' (random bytes), 'truncated' (first third of an
  mp4 whose index is at its end: it does not open) or 'truncated_webm' (first half
  of a webm: it opens and decodes, but ends early)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if kind == 'empty':
    open(path, 'wb').close()
  elif kind == 'corrupt':
    with open(path, 'wb') as f:
      f.write(np.random.RandomState(0).bytes(5000))
  else:
    webm = kind == 'truncated_webm'
    whole = write_video(path + ('.whole.webm' if webm else '.whole.mp4'),
                        num_frames=60 if webm else 20,
                        codec='libvpx-vp9' if webm else 'libx264')
    with open(whole, 'rb') as f:
      data = f.read()
    os.remove(whole)
    with open(path, 'wb') as f:
      f.write(data[:len(data) // (2 if webm else 3)])
  return path


def write_csv(path, header, rows, quote_all=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f, quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
    if header:
      writer.writerow(header)
    writer.writerows(rows)
  return path


def write_json(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(value, f)
  return path


def run_prepare(dataset, videos, annotations, data_dir, *extra):
  """`vivit-prepare` of a test release (short side 32); returns its report."""
  args = [dataset, '--videos', videos, '--data_dir', str(data_dir), '--short_side', '32']
  if annotations:
    args += ['--annotations', annotations]
  return prepare.prepare(prepare.parse_args(args + list(extra)))


EPIC_VERBS = ['take', 'put', 'wash']
EPIC_NOUNS = ['plate', 'cup', 'knife', 'tap']


def write_epic(root):
  """Two long videos (60 and 50 fps) under <participant>/videos, and a third
  video only as released rgb_frames (an extension video: numbered at 50 fps)."""
  videos, annotations = os.path.join(root, 'EPIC-KITCHENS'), os.path.join(root, 'annotations')
  write_video(os.path.join(videos, 'P01', 'videos', 'P01_01.MP4'), 120, 60, (36, 64))
  write_video(os.path.join(videos, 'P02', 'videos', 'P02_03.MP4'), 100, 50, (64, 36))
  frames_dir = os.path.join(videos, 'P03', 'rgb_frames', 'P03_101')
  os.makedirs(frames_dir)
  for n in range(1, 61):
    Image.fromarray(np.full((36, 48, 3), frame_level(n - 1), np.uint8)).save(
        os.path.join(frames_dir, f'frame_{n:010d}.jpg'), quality=95)
  classes = ['id', 'key', 'instances', 'category']
  write_csv(os.path.join(annotations, 'EPIC_100_verb_classes.csv'), classes,
               [[i, v, f"['{v}']", 'x'] for i, v in enumerate(EPIC_VERBS)])
  write_csv(os.path.join(annotations, 'EPIC_100_noun_classes.csv'), classes,
               [[i, n, f"['{n}']", 'x'] for i, n in enumerate(EPIC_NOUNS)])
  header = ['narration_id', 'participant_id', 'video_id', 'narration_timestamp',
            'start_timestamp', 'stop_timestamp', 'start_frame', 'stop_frame', 'narration',
            'verb', 'verb_class', 'noun', 'noun_class', 'all_nouns', 'all_noun_classes']

  def row(nid, video, start, stop, rate, verb, noun):
    stamp = lambda s: f'00:00:{s:05.2f}'
    return [nid, video.split('_')[0], video, stamp(start), stamp(start), stamp(stop),
            max(1, int(start * rate)), int(stop * rate), 'x', EPIC_VERBS[verb], verb,
            EPIC_NOUNS[noun], noun, f"['{EPIC_NOUNS[noun]}']", f'[{noun}]']
  train = [row('P01_01_0', 'P01_01', 0.0, 0.5, 60, 0, 0), row('P01_01_1', 'P01_01', 0.5, 1.2, 60, 1, 1),
           row('P02_03_0', 'P02_03', 0.2, 1.0, 60, 2, 2), row('P03_101_0', 'P03_101', 0.1, 0.9, 50, 0, 3),
           row('P09_09_0', 'P09_09', 0.0, 1.0, 60, 1, 0)]  # no such video
  validation = [row('P01_01_2', 'P01_01', 1.2, 1.9, 60, 2, 1),
                row('P02_03_1', 'P02_03', 1.0, 1.8, 60, 0, 2)]
  write_csv(os.path.join(annotations, 'EPIC_100_train.csv'), header, train)
  write_csv(os.path.join(annotations, 'EPIC_100_validation.csv'), header, validation)
  return videos, annotations


def write_timed(path, times, fps=25, size=(240, 320), noise=True,
                time_base=Fraction(1, 1000)):
  """An MPEG-4 mp4 with one frame at each of `times` (seconds), declaring `fps`
  (the muxer may replace it by the frames' average rate); frames are random noise
  (hard to compress) or frame_level(i) grey."""
  import av
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.RandomState(0)
  with av.open(path, 'w') as container:
    stream = container.add_stream('mpeg4', rate=Fraction(fps))
    stream.height, stream.width = size
    stream.pix_fmt = 'yuv420p'
    stream.codec_context.time_base = time_base
    for i, time in enumerate(times):
      image = (rng.randint(0, 256, (*size, 3), np.uint8) if noise
               else np.full((*size, 3), frame_level(i), np.uint8))
      frame = av.VideoFrame.from_ndarray(image, format='rgb24')
      frame.pts, frame.time_base = round(time / time_base), time_base
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path
