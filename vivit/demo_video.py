"""A demo video of known content: `python -m vivit.demo_video --video demo.mp4`.

`synthetic_motion` clips of known classes one after another, for trying
`vivit-predict --timeline` and `--explain` on a model trained on that dataset (the
README's first command) without a video of one's own. `write_frames` is the video
writer (the tests make their videos with it too).
"""
import itertools
import os
import sys
from fractions import Fraction
from typing import Iterable, List, Optional, Tuple

import numpy as np

from vivit import cli
from vivit.datasets import synthetic
from vivit.video import MAX_SOURCE_FPS

MAX_SEGMENTS = 1000


def write_frames(path: str, frames: Iterable[np.ndarray], fps: float = 25,
                 codec: str = 'libx264', container_format: Optional[str] = None,
                 rotation: int = 0) -> str:
  """Writes `frames` (uint8 `[height, width, 3]` each) to `path` as a video encoded
  losslessly (H.264 at qp 0 by default; VP9 lossless for 'libvpx-vp9'); its path.
  `container_format`: e.g. 'mpegts', or 'h264' (a raw stream, no timestamps).
  Odd sizes are stored as yuv444p. `rotation`: degrees counter-clockwise that the
  stream's display matrix tells players to turn the frames (as a phone records
  them: -90 for one held upright)."""
  import av
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  frames = iter(frames)
  first = next(frames)
  height, width = first.shape[:2]
  odd = height % 2 or width % 2
  with av.open(path, 'w', format=container_format) as container:
    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    stream.height, stream.width = height, width
    stream.pix_fmt = 'yuv444p' if odd else 'yuv420p'
    stream.options = ({'qp': '0', 'preset': 'ultrafast'} if codec == 'libx264'
                      else {'lossless': '1'})
    if rotation:
      stream.set_display_rotation(rotation)
    for image in itertools.chain([first], frames):
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format='rgb24')
      for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  return path


def write_demo_video(path: str, segments: int = 12, fps: float = 25.0, seed: int = 0
                     ) -> List[Tuple[float, float, str]]:
  """A video of `segments` synthetic_motion clips one after another (16 frames each:
  0.64 s at 25 fps, the rate `vivit-predict` decodes at by default), of classes
  drawn in turn from shuffled rounds of all ten, so that neighbours differ; (start,
  end, class name) of each segment in seconds."""
  rng = np.random.default_rng(seed)
  labels = []
  while len(labels) < segments:
    order = [int(c) for c in rng.permutation(len(synthetic.CLASS_NAMES))]
    if labels and order[0] == labels[-1]:
      order.reverse()
    labels += order
  labels = labels[:segments]
  clips = (synthetic.render_clip(label, rng) for label in labels)
  write_frames(path, (frame for clip in clips for frame in clip), fps=fps)
  seconds = synthetic.NUM_FRAMES / fps
  return [(i * seconds, (i + 1) * seconds, synthetic.CLASS_NAMES[label])
          for i, label in enumerate(labels)]


def _main(argv=None) -> int:
  parser = cli.ArgumentParser(
      prog='python -m vivit.demo_video',
      description='Writes a demo video of synthetic_motion clips of known classes, one '
                  'after another (for vivit-predict --timeline and --explain), and '
                  'prints each segment: start and end in seconds, class.')
  parser.add_argument('--video', required=True, help='the file to write (.mp4)')
  parser.add_argument('--segments', type=cli.whole(1, MAX_SEGMENTS), default=12,
                      help=f'clips (default 12, at most {MAX_SEGMENTS})')
  parser.add_argument('--fps', type=cli.finite(0, MAX_SOURCE_FPS, above=True), default=25.0,
                      help="frame rate (default 25, vivit-predict's default: a 16-frame "
                           'clip lasts 0.64 s)')
  parser.add_argument('--seed', type=cli.whole(0, 2 ** 32 - 1), default=0)
  args = parser.parse_args(argv)
  segments = write_demo_video(args.video, args.segments, args.fps, args.seed)
  for start, end, name in segments:
    print(f'{start:6.2f} {end:6.2f}  {name}')
  return 0


if __name__ == '__main__':
  sys.exit(cli.run(_main))
