"""The top classes of a video: `vivit-predict --checkpoint DIR --video FILE`.

  vivit-predict --checkpoint runs/demo --video clip.mp4 --views 4x3

DIR is anything this project writes or converts: a training workdir (its best
params, and its data settings when it is a local directory: a checkpoint from the
Hub or a URL never chooses them), a params directory (`python -m vivit.convert`), or
an HF transformers ViViT directory; a Hub id `org/name[@revision]` or `hf://org/name`. The video is decoded with PyAV at `--fps`
(default: the rate the workdir's dataset was prepared at, else 25), and
every view is cut as the evaluation cuts it: `CLIPSxCROPS` evenly spaced clips of the
model's frame count x 1 or 3 square crops after resizing the short side; the
class probabilities are the softmax of the logits averaged over views (for a
multi-head model, e.g. Epic-Kitchens' noun and verb, each head's own).

  vivit-predict --checkpoint runs/demo --video match.mp4 --timeline match [--hop 1]

writes the top classes of windows over the whole video instead (`vivit.timeline`), and

  vivit-predict --checkpoint runs/demo --video clip.mp4 --explain clip [--class NAME]

where and when in the 1x1 view (or the clip from `--start` seconds) the model looked
for a class (`vivit.explain`). OUT.* are checked before the video is read: none may be
the input or a directory, their directory must be writable, and files that exist are
replaced only with `--overwrite`; they are written whole or not at all.
"""
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

from vivit import cli, explain, outputs, timeline
from vivit.errors import ConfigError
from vivit.inference import ProgressBars, clip_at, load, video_views

# The largest values of the arguments that size a run: what is held in memory at once
# (`--views` clips of every crop, `--batch` windows) and how far into a video.
MAX_CLIPS = 100
MAX_BATCH = 256
MAX_SECONDS = 1e6  # --start, --hop: 11 days


def parse_views(text: str) -> Tuple[int, int]:
  try:
    clips, crops = (int(n) for n in text.lower().split('x'))
  except ValueError:
    raise ConfigError(f'--views {text!r}: expected CLIPSxCROPS, e.g. 4x3') from None
  if not 1 <= clips <= MAX_CLIPS or crops not in (1, 3):
    raise ConfigError(f'--views {text!r}: clips from 1 to {MAX_CLIPS} and crops 1 or 3')
  return clips, crops


def _bars(progress: bool) -> Optional[ProgressBars]:
  """`cli.progress_bar` where bars are wanted (stderr a terminal), else None."""
  return cli.progress_bar if progress else None


def predict(checkpoint: str, video: str, *, views: str = '1x1', top: int = 5,
            fps: Optional[float] = None, stride: Optional[int] = None,
            progress: bool = False) -> Dict[str, List[Tuple[str, float]]]:
  """{head: [(class name, probability), ...] best first}; the head is 'label' for a
  one-head model. `progress`: bars of the decoding on stderr (a long video takes a
  while)."""
  from vivit.step import average_views
  from vivit.models import build_model
  from vivit.step import head_probabilities
  num_clips, num_crops = parse_views(views)
  setup = load(checkpoint, fps=fps, stride=stride)
  clips = video_views(video, fps=setup.fps, num_clips=num_clips, num_crops=num_crops,
                      bars=_bars(progress), **setup.view())
  logits = build_model(setup.model_config).apply({'params': setup.params}, clips)
  logits = np.asarray(average_views(logits[None]))[0]
  result = {}
  for head, probabilities in head_probabilities(logits, setup.names).items():
    result[head] = [(setup.names[head][i], float(probabilities[i]))
                    for i in np.argsort(-probabilities)[:top]]
  return result


def _main(argv=None) -> int:
  parser = cli.ArgumentParser(prog='vivit-predict', description=__doc__)
  cli.add_checkpoint_arguments(parser)
  parser.add_argument('--video', required=True, help='a video file (mp4, webm, ...)')
  parser.add_argument('--views', help='CLIPSxCROPS (default 1x1; the '
                      "paper's test: 4x3)")
  parser.add_argument('--top', type=cli.whole(), help='classes per head to print, or to '
                      'write per window with --timeline (default 5)')
  parser.add_argument('--timeline', metavar='OUT',
                      help='instead: top classes of windows over the whole video, '
                           'written to OUT.csv, OUT.json and OUT.png')
  parser.add_argument('--hop', type=cli.finite(0, MAX_SECONDS, above=True),
                      help="--timeline: seconds between window starts (default: one "
                           "clip's duration, frames x stride / fps)")
  parser.add_argument('--batch', type=cli.whole(1, MAX_BATCH),
                      help='--timeline: windows per model call (default '
                           f'{timeline.DEFAULT_BATCH}, at most {MAX_BATCH})')
  parser.add_argument('--smooth', type=cli.whole(), help='--timeline: average the '
                      'probabilities over this many neighbouring windows (default: off)')
  parser.add_argument('--explain', metavar='OUT',
                      help='instead: space-time relevance of the 1x1 view to a class, '
                           'written to OUT.png (frames and heat overlays), OUT.gif and '
                           'OUT.npz')
  parser.add_argument('--class', dest='class_name', metavar='NAME',
                      help='--explain: the class (HEAD:NAME where heads share names; '
                           "default: the first head's most probable)")
  parser.add_argument('--start', type=cli.finite(0, MAX_SECONDS), metavar='SECONDS',
                      help='--explain: the clip that starts here (e.g. a timeline '
                           "window's start) instead of the video's centre clip")
  parser.add_argument('--method', choices=explain.METHODS,
                      help="--explain: 'rollout' (attention rollout), 'gradient' "
                           "(gradient-weighted attention) or 'auto' (default: rollout "
                           'for a CLS-token model when no class is named, else gradient)')
  parser.add_argument('--overwrite', action='store_true',
                      help='--timeline, --explain: replace OUT.* files that exist '
                           '(default: refuse, naming them)')
  args = parser.parse_args(argv)
  if args.views:
    parse_views(args.views)  # refused before the checkpoint is read
  _check_modes(args)
  _check_outputs(args)
  if args.timeline:
    return _timeline_main(args)
  if args.explain:
    return _explain_main(args)
  cli.print_devices(line=sys.stdout.isatty())  # piped, stdout holds only the classes
  result = predict(args.checkpoint, args.video, views=args.views or '1x1', top=args.top,
                   fps=args.fps, stride=args.stride, progress=sys.stderr.isatty())
  for head, classes in result.items():
    if len(result) > 1:
      print(f'{head}:')
    width = max(len(name) for name, _ in classes)
    for name, probability in classes:
      print(f'  {name:<{width}}  {probability:.3f}')
  return 0


def _check_modes(args) -> None:
  """ConfigError for options that do not go together: `--timeline` and `--explain`
  (each with its own options, neither with `--views`; `--top` not with `--explain`).
  Sets `--top`'s default."""
  if args.timeline and args.explain:
    raise ConfigError('--timeline and --explain: one at a time')
  if args.views and (args.timeline or args.explain):
    raise ConfigError(f'--{"timeline" if args.timeline else "explain"} with --views: '
                      'one view of each window or clip, the 1x1 (leave out --views)')
  if args.explain and args.top is not None:
    raise ConfigError('--explain with --top: an explanation is of one class (--class)')
  args.top = 5 if args.top is None else args.top
  own = {'--timeline': ('hop', 'batch', 'smooth'),
         '--explain': ('class_name', 'method', 'start')}
  for option, names in own.items():
    given = [f'--{name.replace("_name", "")}' for name in names
             if getattr(args, name) is not None]
    if given and not getattr(args, option[2:]):
      raise ConfigError(f'{", ".join(given)}: only with {option}')
  if args.overwrite and not (args.timeline or args.explain):
    raise ConfigError('--overwrite: only with --timeline or --explain')


def _check_outputs(args) -> None:
  """OutputError for files of `--timeline`/`--explain` that may not be written
  (`outputs.check_files`), before anything is read."""
  for option, out, paths in (('--timeline', args.timeline, timeline.paths),
                             ('--explain', args.explain, explain.paths)):
    if out:
      outputs.check_files(f'{option} {out}', paths(out),
                          {'--video': args.video, '--checkpoint': args.checkpoint},
                          args.overwrite)


def _timeline_main(args) -> int:
  """`--timeline OUT`: writes the files, prints their paths."""
  setup = load(args.checkpoint, fps=args.fps, stride=args.stride)
  cli.print_devices(line=sys.stdout.isatty())
  result = timeline.timeline(
      setup, args.video, hop=args.hop,
      batch=timeline.DEFAULT_BATCH if args.batch is None else args.batch,
      smooth=1 if args.smooth is None else args.smooth, bars=_bars(sys.stderr.isatty()))
  for path in timeline.write(args.timeline, result, args.top):
    print(path)
  return 0


def _explain_main(args) -> int:
  """`--explain OUT`: writes the files, prints the class explained and their paths."""
  setup = load(args.checkpoint, fps=args.fps, stride=args.stride)
  cli.print_devices(line=sys.stdout.isatty())
  if args.start is None:
    clip = video_views(args.video, fps=setup.fps, num_clips=1, num_crops=1,
                       bars=_bars(sys.stderr.isatty()), whole_clips=True,
                       **setup.view())[0]
  else:
    clip = clip_at(args.video, setup, args.start, bars=_bars(sys.stderr.isatty()))
  result = explain.explain(setup, clip, class_name=args.class_name,
                           method=args.method or 'auto')
  print(f'{result.class_name} ({result.head}, probability {result.probability:.3f}): '
        f'{result.method} relevance')
  for path in explain.write(args.explain, result):
    print(path)
  return 0


def main(argv=None) -> int:
  """`vivit-predict`."""
  return cli.run(_main, argv)


if __name__ == '__main__':
  sys.exit(main())
