"""A demo video of known content: `python -m vivit.demo_video --video demo.mp4`.

`synthetic_motion` clips of known classes one after another, for trying
`vivit-predict --timeline` and `--explain` on a model trained on that dataset (the
README's first command) without a video of one's own.
"""
import sys

from vivit import cli
from vivit.datasets import synthetic
from vivit.errors import ConfigError


def _main(argv=None) -> int:
  parser = cli.ArgumentParser(
      prog='python -m vivit.demo_video',
      description='Writes a demo video of synthetic_motion clips of known classes, one '
                  'after another (for vivit-predict --timeline and --explain), and '
                  'prints each segment: start and end in seconds, class.')
  parser.add_argument('--video', required=True, help='the file to write (.mp4)')
  parser.add_argument('--segments', type=int, default=12, help='clips (default 12)')
  parser.add_argument('--fps', type=float, default=25.0,
                      help="frame rate (default 25, vivit-predict's default: a 16-frame "
                           'clip lasts 0.64 s)')
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)
  if args.segments < 1 or args.fps <= 0:
    raise ConfigError(f'--segments {args.segments} --fps {args.fps:g}: at least one '
                     f'segment, a rate > 0')
  segments = synthetic.write_demo_video(args.video, args.segments, args.fps, args.seed)
  for start, end, name in segments:
    print(f'{start:6.2f} {end:6.2f}  {name}')
  return 0


if __name__ == '__main__':
  sys.exit(cli.run(_main))
