"""Prepare a dataset: `vivit-prepare DATASET --videos DIR --annotations PATH --data_dir OUT`.

Examples:
  vivit-prepare kinetics400 --videos k400/videos \\
      --annotations k400/annotations --data_dir /data/tfds --workers 16
  vivit-prepare video_folder --name birds --videos my_videos --data_dir /data/tfds

Turns an official dataset release (or any folder of labelled videos) into a TFDS
dataset of JPEG frames at `--fps`, short side `--short_side`, that training reads
with `--config.dataset.name=DATASET --config.dataset.data_dir=OUT`; your own videos
under a name (`video_folder --name NAME`: `--config.dataset.name=video_folder/NAME`),
as many as you like in one data dir.

Bad videos are skipped and listed in OUT/DATASET[/NAME]/prepare_report.json. A run that
is killed resumes where it stopped; a finished dataset is not rebuilt, and one
prepared (or begun) from other videos or annotations is refused unless --rebuild.
"""
import argparse
import os
import sys
from collections import Counter

from vivit import cli, datasets, video
from vivit.datasets.builder import prepare_dataset
from vivit.datasets.video_folder import check_name
from vivit.errors import ConfigError, MissingError

# The largest --short_side (8K video's) and --workers.
MAX_SHORT_SIDE = 4320
MAX_WORKERS = 1024


def parse_args(argv=None):
  names = list(datasets.releases())
  parser = cli.ArgumentParser(prog='vivit-prepare', description=__doc__)
  parser.add_argument('dataset', choices=names, metavar='DATASET',
                      help='one of: ' + ', '.join(names))
  parser.add_argument('--videos', required=True, help='directory of the video files')
  parser.add_argument('--annotations', help='directory of the official annotation files '
                      '(video_folder: a CSV path,label[,split]; omit for a '
                      '<split>/<class>/<video> tree)')
  parser.add_argument('--data_dir', required=True, help='TFDS data directory to write')
  parser.add_argument('--name', type=dataset_name, default=None,
                      help='video_folder: the dataset\'s name (letters, digits, _ and -), '
                      'read as video_folder/NAME; one data dir holds any number (without '
                      'it: plain video_folder, one per data dir)')
  parser.add_argument('--rebuild', action='store_true',
                      help='delete what the data dir holds of this dataset (only its own '
                      'files), whatever it was prepared from, and prepare it again')
  parser.add_argument('--fps', type=cli.finite(0, video.MAX_SOURCE_FPS), default=None,
                      help='frames per second to store (default 25; ssv2: 12, its own '
                      f'rate; at most {video.MAX_SOURCE_FPS:g}); 0 keeps every source frame')
  parser.add_argument('--short_side', type=cli.whole(0, MAX_SHORT_SIDE), default=256,
                      help='resize frames so their short side is this (0: keep; at most '
                      f'{MAX_SHORT_SIDE})')
  parser.add_argument('--workers', type=cli.whole(1, MAX_WORKERS), default=1,
                      help=f'decoding processes (default 1, at most {MAX_WORKERS})')
  parser.add_argument('--beam', action='store_true',
                      help='generate with Apache Beam (pip install apache-beam)')
  parser.add_argument('--beam_options', default='',
                      help='Beam pipeline options, e.g. "--runner=DirectRunner '
                      '--direct_num_workers=8 --direct_running_mode=multi_processing"')
  parser.add_argument('--keep_work', action='store_true',
                      help='keep the per-video work files after finishing (a later run '
                      'then only rewrites the report and removes them)')
  return parser.parse_args(argv)


def dataset_name(text: str) -> str:
  """argparse `type=` of --name."""
  try:
    return check_name(text)
  except ConfigError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


def check_args(args, builder_cls) -> video.Resample:
  if args.name is not None and not builder_cls.NAMED:
    raise ConfigError(f'--name is for video_folder; {args.dataset} is one dataset, '
                      f'prepared once per --data_dir')
  if not os.path.isdir(args.videos):
    raise MissingError(f'--videos {args.videos}: no such directory')
  if args.annotations is None and args.dataset != 'video_folder':
    raise ConfigError(f'{args.dataset} needs --annotations (the directory of the '
                      f'official annotation files)')
  if args.annotations is not None and not os.path.exists(args.annotations):
    raise MissingError(f'--annotations {args.annotations}: not found')
  if args.workers < 1:
    raise ConfigError('--workers must be at least 1')
  fps = builder_cls.DEFAULT_FPS if args.fps is None else args.fps
  if fps < 0 or args.short_side < 0:
    raise ConfigError('--fps and --short_side must be positive (or 0 to keep)')
  return video.Resample(fps=fps, short_side=args.short_side)


def prepare(args) -> dict:
  """`prepare_dataset`, printing what its report says; returns it ({}: nothing to do)."""
  builder_cls = datasets.releases()[args.dataset]
  builder, report = prepare_dataset(
      builder_cls, data_dir=args.data_dir, videos=args.videos, annotations=args.annotations,
      resample=check_args(args, builder_cls), workers=args.workers,
      beam_options=args.beam_options if args.beam else None, keep_work=args.keep_work,
      name=args.name, rebuild=args.rebuild)
  if report:
    skipped = report['skipped']
    reasons = Counter(s['reason'].split(':')[0] for s in skipped)
    print(f'{builder.dataset_name}: wrote '
          + ', '.join(f'{s} {n}' for s, n in report['examples'].items())
          + f' examples to {builder.data_dir}; skipped {len(skipped)} videos'
          + (' (' + ', '.join(f'{n} {r}' for r, n in reasons.most_common()) + ')'
             if skipped else '') + f'; report: {builder.report_path}', flush=True)
  return report


def _main(argv=None) -> int:
  prepare(parse_args(argv))
  return 0


def main(argv=None) -> int:
  """`vivit-prepare`."""
  return cli.run(_main, argv)


if __name__ == '__main__':
  sys.exit(main())
