"""Convert a checkpoint: `vivit-convert --from {transformers,scenic} --src ... --dst ...`

  vivit-convert --from transformers --src google/vivit-b-16x2-kinetics400 --dst k400_b
  vivit-convert --from scenic --src checkpoint_dir --scenic-config vivit_base_k400.py \\
      --dst k400_b

`--src` is a local path or a Hugging Face Hub id, `org/name` or `org/name@revision`
(`hf://org/name` to say so where `org/` is also a local directory; fetched into the
Hub cache; HF_HOME, HF_HUB_OFFLINE and HF_TOKEN apply).

Writes a vivit-jax params checkpoint (see `vivit.checkpoints`) that training,
fine-tuning and evaluation load, into `--dst`: a new directory or an empty one (one
that holds anything is refused, before `--src` is read), filled whole or not at all.
Scenic checkpoints also need the scenic config file they were trained with
(`--scenic-config`, a Python file with `get_config()`).
"""
import sys

from vivit import cli, outputs
from vivit.checkpoints import save_params
from vivit.convert import from_scenic, from_transformers
from vivit.convert.transformers import hf_class_names
from vivit.hub import resolve
from vivit.recipes import load_config

# The largest --num-classes and --input-size / --trained-input-size sides: the head and
# the position embeddings they size are allocated.
MAX_CLASSES = 100_000
MAX_INPUT_SIZE = 512


def _main(argv=None) -> int:
  parser = cli.ArgumentParser(prog='vivit-convert', description=__doc__)
  parser.add_argument('--from', dest='source', required=True,
                      choices=('transformers', 'scenic'))
  parser.add_argument('--src', required=True,
                      help='HF save_pretrained directory or Hub id (org/name[@revision], '
                           'e.g. google/vivit-b-16x2-kinetics400), or scenic checkpoint '
                           'file/dir')
  parser.add_argument('--dst', required=True,
                      help='output directory: a new or empty one (one that holds files, '
                           'e.g. a training workdir, is refused)')
  parser.add_argument('--scenic-config', help='scenic config file (with --from scenic)')
  parser.add_argument('--num-classes', type=cli.whole(1, MAX_CLASSES),
                      help=f'scenic: override the head width (at most {MAX_CLASSES})')
  parser.add_argument('--input-size', type=cli.whole(1, MAX_INPUT_SIZE), nargs=3,
                      metavar=('T', 'H', 'W'),
                      help='clip size to use the model at (position embeddings resized; '
                           f'each at most {MAX_INPUT_SIZE}); default: as trained')
  parser.add_argument('--trained-input-size', type=cli.whole(1, MAX_INPUT_SIZE), nargs=3,
                      metavar=('T', 'H', 'W'),
                      help='scenic: clip size the checkpoint was trained on, where neither '
                           'its config nor its shapes tell')
  args = parser.parse_args(argv)
  if args.source == 'scenic' and not args.scenic_config:
    parser.error('--from scenic needs --scenic-config')
  outputs.check_new_directory('--dst', args.dst)  # before anything is read or fetched
  src = resolve(args.src)
  if args.source == 'transformers':
    config, params = from_transformers(src, input_size=args.input_size)
    class_names = hf_class_names(src)
  else:
    config, params = from_scenic(src, load_config(args.scenic_config),
                                 num_classes=args.num_classes, input_size=args.input_size,
                                 trained_input_size=args.trained_input_size)
    class_names = None
  with outputs.new_directory('--dst', args.dst) as dst:
    save_params(dst, config, params, class_names)
  print(f'wrote {config.variant} model ({config.num_layers} layers, hidden '
        f'{config.hidden_size}, {config.num_classes} classes, input '
        f'{tuple(config.input_size)}) to {args.dst}')
  return 0


def main(argv=None) -> int:
  """`vivit-convert`."""
  return cli.run(_main, argv)


if __name__ == '__main__':
  sys.exit(main())
