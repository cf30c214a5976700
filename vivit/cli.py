"""What every command shares: one-line errors for the mistakes a user can make, quiet
logs, `--verbose` (or `VIVIT_VERBOSE=1`) for tracebacks and library logs, TensorFlow
kept off the GPUs, the start-up line naming the devices JAX runs on, and the progress
bar of a video being read."""
import argparse
import collections
import functools
import os
import subprocess
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from ml_collections import ConfigDict

from vivit import ranges, verbose
from vivit.errors import ConfigError, UserError
from vivit.video import Progress

# The modules of setup.py's extras, by extra: imported inside functions only, so a base
# install runs everything else; without one, `run` says which extra brings it.
EXTRAS = {'transformers': 'hf', 'safetensors': 'hf', 'torch': 'hf', 'huggingface_hub': 'hf',
          'apache_beam': 'beam', 'wandb': 'wandb', 'mlflow': 'mlflow'}


def user_errors() -> tuple:
  """What a user's mistake raises: our `UserError`s, and the library errors that
  always mean bad input (a dataset TFDS does not know, a path the user may not
  write). Anything else is a bug and keeps its traceback."""
  from tensorflow_datasets.core.registered import DatasetNotFoundError
  return UserError, DatasetNotFoundError, PermissionError


def duration(seconds: float) -> str:
  """`1h02m`, `3m07s` or `42s`: an elapsed time or an ETA in a progress line."""
  minutes, seconds = divmod(int(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  return f'{minutes}m{seconds:02d}s' if minutes else f'{seconds}s'


def progress_bar(description: Optional[str]
                 ) -> Tuple[Optional[Progress], Callable[[], None]]:
  """(a video reader's progress callback, closer): a tqdm bar of the seconds of
  video read, on stderr, shown only after 2 s (short videos
  show none); no bar (None, a closer that does nothing) without a `description`."""
  if not description:
    return None, lambda: None
  from tqdm import tqdm
  bar = tqdm(desc=description, unit='s', file=sys.stderr, delay=2.0,
             bar_format='{desc}: {n:.0f}/{total_fmt} s of video [{elapsed}<{remaining}]')

  def update(seconds: float, end: Optional[float]) -> None:
    if end and bar.total is None:
      bar.total = round(end)
    bar.update(seconds - bar.n)
  return update, bar.close


def one_line(error: BaseException) -> str:
  """The error's message on one line (unwrapping errors that only wrap another)."""
  while error.args and isinstance(error.args[0], BaseException):
    error = error.args[0]
  text = str(error)
  if isinstance(error, KeyError) and error.args and isinstance(error.args[0], str):
    text = error.args[0]  # str(KeyError) is the repr of its message
  return ' '.join(text.split()) or type(error).__name__


def run(main: Callable[[Optional[List[str]]], Optional[int]],
        argv: Optional[List[str]] = None) -> int:
  """`main(argv)`'s exit status; a user error becomes `error: ...` on stderr and
  status 2 (its traceback only with --verbose)."""
  quiet_libraries()
  hide_gpus_from_tensorflow()
  try:
    return main(argv) or 0
  except KeyboardInterrupt:
    print('interrupted', file=sys.stderr)
    return 130  # a shell's status for SIGINT
  except (ModuleNotFoundError,) + user_errors() as e:  # pylint: disable=catching-non-exception
    message = missing_extra(e) if isinstance(e, ModuleNotFoundError) else one_line(e)
    if message is None or verbose() or '--verbose' in (argv or []):
      raise
    print(f'error: {message}', file=sys.stderr)
    return 2


def missing_extra(error: ModuleNotFoundError) -> Optional[str]:
  """The line for a module of one of setup.py's extras that is not installed (None for
  any other module: a broken install, kept with its traceback)."""
  module = (error.name or '').partition('.')[0]
  if module not in EXTRAS:
    return None
  extra = EXTRAS[module]
  return (f'this needs {module}, which comes with the {extra!r} extra: pip install -e '
          f'".[{extra}]" in a clone, or pip install "vivit-jax[{extra}]"')


def quiet_libraries() -> None:
  """absl INFO/WARNING from orbax and tfds and TFDS progress bars off, unless verbose
  (TensorFlow's C++ start-up lines are silenced in `vivit/__init__.py`, before it
  loads)."""
  if verbose():
    return
  from absl import logging
  logging.set_verbosity(logging.ERROR)
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()


@functools.lru_cache(maxsize=None)
def hide_gpus_from_tensorflow() -> None:
  """TensorFlow only feeds data: where it could see an NVIDIA GPU (a full `tensorflow`
  install), it must not take the GPU memory JAX needs. Before any TensorFlow op."""
  if nvidia_gpu_present():
    import tensorflow as tf
    try:
      tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:  # TensorFlow already started: not a command's first call
      pass


@functools.lru_cache(maxsize=None)
def nvidia_gpu_present() -> bool:
  """Whether this machine has an NVIDIA GPU (its driver lists one), whatever JAX uses."""
  gpus = '/proc/driver/nvidia/gpus'
  if os.path.isdir(gpus) and os.listdir(gpus):
    return True
  try:
    listing = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True,
                             timeout=20)
  except (OSError, subprocess.SubprocessError):
    return False
  return listing.returncode == 0 and 'GPU' in listing.stdout


def devices_line(backend: str, device_kinds: Sequence[str], process_count: int) -> str:
  """E.g. `devices: 8 x NVIDIA H100 80GB HBM3 (gpu), 2 processes`."""
  kinds = ', '.join(f'{count} x {kind}'
                    for kind, count in collections.Counter(device_kinds).items())
  processes = f', {process_count} processes' if process_count > 1 else ''
  return f'devices: {kinds} ({backend}){processes}'


def cpu_warning(backend: str, nvidia_present: Callable[[], bool]) -> Optional[str]:
  """The warning for JAX on the CPU of a machine with an NVIDIA GPU, else None (also
  where JAX_PLATFORMS chose the platform)."""
  if backend != 'cpu' or os.environ.get('JAX_PLATFORMS') or not nvidia_present():
    return None
  return ('warning: this machine has an NVIDIA GPU but JAX runs on the CPU; for the GPU: '
          'pip install -e ".[cuda12]"')


def print_devices(line: bool = True,
                  nvidia_present: Callable[[], bool] = nvidia_gpu_present) -> None:
  """On host 0: the `devices_line` on stdout (if `line`) and the `cpu_warning`, if
  any, on stderr."""
  import jax
  if jax.process_index() != 0:
    return
  backend = jax.default_backend()
  if line:
    print(devices_line(backend, [d.device_kind for d in jax.devices()],
                       jax.process_count()), flush=True)
  warning = cpu_warning(backend, nvidia_present)
  if warning:
    print(warning, file=sys.stderr, flush=True)


def configs_dir() -> str:
  """The shipped configs: `vivit/configs` of an installed package, else `configs/`
  beside `vivit/` in a clone (also under `pip install -e .`)."""
  package = os.path.dirname(os.path.abspath(__file__))
  installed = os.path.join(package, 'configs')
  return installed if os.path.isdir(installed) else os.path.join(os.path.dirname(package),
                                                                   'configs')


def config_names() -> List[str]:
  """The shipped configs' names: their paths under `configs_dir()`, without `.py`."""
  root, names = configs_dir(), []
  for directory, subdirectories, files in os.walk(root):
    subdirectories[:] = sorted(d for d in subdirectories if not d.startswith(('_', '.')))
    names += [os.path.relpath(os.path.join(directory, f[:-3]), root).replace(os.sep, '/')
              for f in sorted(files) if f.endswith('.py') and not f.startswith('_')]
  return names


def config_file(value: str) -> str:
  """`--config`'s value with a shipped config's name (`synthetic_motion`,
  `kinetics400/vivit_b_16x2`, `synthetic_motion:factorised_encoder`) replaced by its
  file; a path that exists is kept as it is."""
  name, colon, arg = value.partition(':')
  if os.path.exists(name):
    return value
  if name not in config_names():
    raise ConfigError(f'--config {value}: no such file, nor a shipped config (shipped: '
                      f'{", ".join(config_names())})')
  return os.path.join(configs_dir(), *name.split('/')) + '.py' + colon + arg


def with_config_files(argv: List[str]) -> List[str]:
  """`argv` with the value of each `--config` (`--config X`, `--config=X`) passed
  through `config_file`; `--config.FIELD` overrides are left alone."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg == '--':
      break
    flag, equals, value = arg.partition('=')
    if flag in ('--config', '-config'):
      if equals:
        argv[i] = f'{flag}={config_file(value)}'
      elif i + 1 < len(argv):
        argv[i + 1] = config_file(argv[i + 1])
  return argv


def absl_flags_parser(argv: List[str]):
  """absl's flag parsing, with a bad flag, config name or config override as a
  one-line error."""
  from absl import flags
  try:
    argv = with_config_files(argv)
  except ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError) as e:
    # ml_collections reports a misspelt --config.X as an AttributeError or KeyError.
    if verbose():
      raise
    prefix = '' if isinstance(e, flags.Error) else 'bad --config override: '
    print(f'error: {prefix}{one_line(e)}', file=sys.stderr)
    sys.exit(2)


def run_config_command(prog: str, doc: str, workdir_help: str,
                       command: Callable[[ConfigDict, str], object]) -> None:
  """`prog --config FILE|NAME[:ARG] --workdir DIR [--distributed]` (train, evaluate): absl
  flags (parsed by `absl_flags_parser`, errors by `run`), then `command(config,
  workdir)`; `doc` is what `--help` prints first."""
  from absl import app, flags
  from ml_collections import config_flags
  from vivit import sharding
  config_flags.DEFINE_config_file(
      'config', None, 'A config file, or the name of a shipped one (e.g. synthetic_motion, '
      'kinetics400/vivit_b_16x2), with an optional :ARG (synthetic_motion:factorised_encoder).',
      lock_config=True)
  flags.DEFINE_string('workdir', None, workdir_help)
  flags.DEFINE_bool('distributed', False,
                    'Call jax.distributed.initialize() (one process per host).')
  flags.DEFINE_bool('verbose', False, 'Tracebacks of errors and library logs.')
  if any(arg in ('-h', '-help', '--help', '--helpshort') for arg in sys.argv[1:]):
    # absl's own --help shows the __main__ module's doc and flags: for an entry
    # point, the generated wrapper's (none). This one's, and status 0.
    ours = [m for m in flags.FLAGS.flags_by_module_dict()  # (__main__ is keyed by its path)
            if m.startswith('vivit') or m == sys.argv[0]]
    print(doc.strip() + '\n\nflags:\n' + '\n'.join(map(flags.FLAGS.module_help, ours)))
    sys.exit(0)

  def main(argv):
    del argv
    if flags.FLAGS.config is None or flags.FLAGS.workdir is None:
      raise ConfigError(f'--config and --workdir are required, e.g. {prog} --config '
                        f'synthetic_motion --workdir runs/demo')
    if flags.FLAGS.distributed:
      sharding.initialize_distributed()
    print_devices()
    config = flags.FLAGS.config
    config.unlock()
    command(config, flags.FLAGS.workdir)
  app.run(lambda argv: run(lambda _: main(argv)), flags_parser=absl_flags_parser)


class ArgumentParser(argparse.ArgumentParser):
  """argparse with a `--verbose` flag and one-line usage errors: ConfigErrors, which
  `run` prints (status 2), as any other mistake."""

  def __init__(self, *args, **kwargs):
    kwargs.setdefault('formatter_class', argparse.RawDescriptionHelpFormatter)
    super().__init__(*args, **kwargs)
    self.add_argument('--verbose', action='store_true',
                      help='tracebacks of errors and library logs')

  def error(self, message):
    raise ConfigError(f'{message} (see {self.prog} --help)')


def argument_type(allowed: ranges.Range) -> Callable[[str], float]:
  """An argparse `type=` for a numeric argument: its value where `allowed` admits it,
  else a one-line usage error naming the flag and what it allows (`error: argument
  --hop: 'nan' is not a finite number > 0 and <= 1e+06`)."""
  def parse(text: str):
    try:
      value = int(text) if allowed.whole else float(text)
    except ValueError:  # also a whole number of more digits than int() reads
      value = None
    if value is None or not allowed.admits(value):
      raise argparse.ArgumentTypeError(f'{text!r} is not {allowed}')
    return value
  return parse


def whole(low: int = 1, high: int = ranges.MAX_WHOLE) -> Callable[[str], int]:
  """argparse `type=`: a whole number from `low` to `high` (by default, positive)."""
  return argument_type(ranges.whole(low, high))


def finite(low: float = -float('inf'), high: float = float('inf'), *,
           above: bool = False) -> Callable[[str], float]:
  """argparse `type=`: a finite number from `low` (`above`: greater than it) to `high`."""
  return argument_type(ranges.finite(low, high, above=above))


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
  """`--checkpoint`, `--fps` and `--stride`: what `vivit.inference.load` takes, for the
  commands that read a model for prediction (predict, export)."""
  from vivit.inference import DEFAULT_FPS, DEFAULT_STRIDE, MAX_STRIDE
  from vivit.video import MAX_SOURCE_FPS
  parser.add_argument('--checkpoint', required=True,
                      help='training workdir, params directory, HF ViViT directory or '
                           'Hub id (org/name[@revision])')
  parser.add_argument('--fps', type=finite(0, MAX_SOURCE_FPS, above=True),
                      help="the frame rate clips are cut at (default: the training "
                           f"dataset's, else {DEFAULT_FPS:g}; at most {MAX_SOURCE_FPS:g})")
  parser.add_argument('--stride', type=whole(1, MAX_STRIDE),
                      help="frame stride of a clip (default: the training config's, else "
                           f'{DEFAULT_STRIDE}; at most {MAX_STRIDE})')
