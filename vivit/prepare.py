"""Prepare a dataset: `vivit-prepare DATASET --videos DIR --annotations PATH --data_dir OUT`.

Turns an official dataset release (or any folder of labelled videos) into a TFDS
dataset of JPEG frames at `--fps`, short side `--short_side`, that training reads
with `--config.dataset.name=DATASET --config.dataset.data_dir=OUT`.

Examples:
  vivit-prepare kinetics400 --videos k400/videos \\
      --annotations k400/annotations --data_dir /data/tfds --workers 16
  vivit-prepare video_folder --videos my_videos --data_dir /data/tfds

Bad videos are skipped and listed in OUT/DATASET/prepare_report.json. A run that
is killed resumes where it stopped; a finished dataset is not rebuilt.
"""
import json
import os
import sys
from collections import Counter

from vivit import cli
from vivit.data import decode
from vivit.data.video_builder import builders


def parse_args(argv=None):
  names = list(builders())
  parser = cli.ArgumentParser(prog='vivit-prepare', description=__doc__)
  parser.add_argument('dataset', choices=names, metavar='DATASET',
                      help='one of: ' + ', '.join(names))
  parser.add_argument('--videos', required=True, help='directory of the video files')
  parser.add_argument('--annotations', help='directory of the official annotation files '
                      '(video_folder: a CSV path,label[,split]; omit for a '
                      '<split>/<class>/<video> tree)')
  parser.add_argument('--data_dir', required=True, help='TFDS data directory to write')
  parser.add_argument('--fps', type=float, default=None,
                      help='frames per second to store (default 25; ssv2: 12, its own '
                      'rate); 0 keeps every source frame')
  parser.add_argument('--short_side', type=int, default=256,
                      help='resize frames so their short side is this (0: keep)')
  parser.add_argument('--workers', type=int, default=1,
                      help='decoding processes (default 1)')
  parser.add_argument('--beam', action='store_true',
                      help='generate with Apache Beam (pip install apache-beam)')
  parser.add_argument('--beam_options', default='',
                      help='Beam pipeline options, e.g. "--runner=DirectRunner '
                      '--direct_num_workers=8 --direct_running_mode=multi_processing"')
  parser.add_argument('--keep_work', action='store_true',
                      help='keep the per-video work files after finishing (a later run '
                      'then only rewrites the report and removes them)')
  return parser.parse_args(argv)


def check_args(args, builder_cls) -> decode.Resample:
  if not os.path.isdir(args.videos):
    raise FileNotFoundError(f'--videos {args.videos}: no such directory')
  if args.annotations is None and args.dataset != 'video_folder':
    raise ValueError(f'{args.dataset} needs --annotations (the directory of the '
                     f'official annotation files)')
  if args.annotations is not None and not os.path.exists(args.annotations):
    raise FileNotFoundError(f'--annotations {args.annotations}: not found')
  if args.workers < 1:
    raise ValueError('--workers must be at least 1')
  fps = builder_cls.DEFAULT_FPS if args.fps is None else args.fps
  if fps < 0 or args.short_side < 0:
    raise ValueError('--fps and --short_side must be positive (or 0 to keep)')
  return decode.Resample(fps=fps, short_side=args.short_side)


def check_prepared(builder, resample: decode.Resample) -> bool:
  """True when `builder`'s data dir holds the finished dataset with these settings;
  an error when it holds it with other settings."""
  if not builder.is_prepared():
    return False
  stored = decode.Resample(fps=builder.info.metadata['fps'],
                           short_side=builder.info.metadata['short_side'])
  if stored != resample:
    raise ValueError(f'{builder.data_dir} already holds {builder.name} prepared with '
                     f'fps={stored.fps:g}, short_side={stored.short_side}; use another '
                     f'--data_dir for fps={resample.fps:g}, short_side={resample.short_side}')
  return True


def prepare(args) -> dict:
  """Prepares the dataset (stage 1 and 2, see `video_builder`) and writes the report;
  returns it, or {} when the dataset was already there."""
  builder_cls = builders()[args.dataset]
  resample = check_args(args, builder_cls)
  existing = builder_cls(data_dir=args.data_dir)
  if check_prepared(existing, resample) and not os.path.isdir(existing.work_dir):
    sizes = ', '.join(f'{s} {v.num_examples}' for s, v in existing.info.splits.items())
    print(f'{existing.name} is already prepared in {existing.data_dir} ({sizes}); '
          f'nothing to do')
    return {}
  builder = builder_cls(data_dir=args.data_dir, videos=args.videos,
                        annotations=args.annotations, resample=resample,
                        workers=args.workers, beam=args.beam)
  entries = builder.entries()
  per_split = Counter(e.split for e in entries)
  not_found = sum(e.path is None for e in entries)
  classes = ', '.join(f'{len(builder.info.features[name].names)} '
                      f'{"" if name == "label" else name + " "}classes'
                      for name in builder.LABEL_FEATURES)
  print(f'{builder.name}: {len(entries)} clips ('
        + ', '.join(f'{s} {n}' for s, n in per_split.items()) + f'), {classes}; '
        f'{not_found} not found under {args.videos}; storing {resample.fps:g} fps, '
        f'short side {resample.short_side or "as is"}', flush=True)
  if not builder.is_prepared():  # else a run stopped after writing it: just report
    builder.remove_incomplete()
    download_config = None
    if args.beam:
      import tensorflow_datasets as tfds
      from apache_beam.options.pipeline_options import PipelineOptions
      download_config = tfds.download.DownloadConfig(
          beam_options=PipelineOptions(args.beam_options.split()))
    builder.download_and_prepare(download_config=download_config)

  skipped = builder.failures()
  written = {s: v.num_examples for s, v in builder.info.splits.items()}
  report = {'dataset': builder.name, 'data_dir': builder.data_dir,
            'fps': resample.fps, 'short_side': resample.short_side,
            'clips_in_annotations': dict(per_split), 'examples': written,
            'skipped': skipped}
  with open(builder.report_path, 'w') as f:
    json.dump(report, f, indent=1)
  if not args.keep_work:
    builder.remove_work_dir()
  reasons = Counter(s['reason'].split(':')[0] for s in skipped)
  print(f'{builder.name}: wrote ' + ', '.join(f'{s} {n}' for s, n in written.items())
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
