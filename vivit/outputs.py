"""The files a command writes for its user (`vivit-predict --timeline/--explain`'s
OUT.*, `vivit-convert --dst`): checked before any decoding or inference, never over
an input, never over an existing file unless asked (`--overwrite`; a new or empty
directory for `--dst`), and written whole or not at all (to temporary names beside
them, renamed once all are written). A failed write (a full disk, a read-only file
system) is one `OutputError` naming the file."""
import contextlib
import os
import shutil
from typing import Callable, Dict, Iterator, List, Sequence

from etils import epath

from vivit.errors import OutputError, UserError
from vivit.workdir import atomic_path, cannot_write, is_local


def _same_file(a: str, b: str) -> bool:
  """Whether paths `a` and `b` name one file (links followed; either may not exist)."""
  try:
    return os.path.samefile(a, b)
  except OSError:
    return os.path.realpath(a) == os.path.realpath(b)


def _check_writable_directory(option: str, directory: str) -> None:
  if not os.path.lexists(directory):
    raise OutputError(f'{option}: directory {directory} does not exist')
  if not os.path.isdir(directory):
    raise OutputError(f'{option}: {directory} is not a directory')
  if not os.access(directory, os.W_OK | os.X_OK):
    raise OutputError(f'{option}: directory {directory} is not writable')


def check_files(option: str, paths: Sequence[str], inputs: Dict[str, str],
                overwrite: bool) -> None:
  """OutputError unless each of `paths` (the files of `option`, e.g. `--timeline
  match`) can be written: none is one of `inputs` ({option: path}) or a directory,
  each one's directory exists and is writable, and none exists unless `overwrite`."""
  for path in paths:
    for input_option, input_path in inputs.items():
      if _same_file(path, input_path):
        raise OutputError(f'{option}: it would write {path} over the input '
                          f'{input_option} {input_path}; choose another name')
    if os.path.isdir(path):
      raise OutputError(f'{option}: {path} is a directory; choose another name')
    _check_writable_directory(option, os.path.dirname(os.path.abspath(path)))
  existing = [path for path in paths if os.path.lexists(path)]
  if existing and not overwrite:
    raise OutputError(f'{option}: {", ".join(existing)} '
                      f'{"exists" if len(existing) == 1 else "exist"}; add --overwrite '
                      f'to replace {"it" if len(existing) == 1 else "them"}, or choose '
                      f'another name')


def write_files(writers: Dict[str, Callable[[str], None]]) -> List[str]:
  """Writes each file of `writers` ({path: function writing a file at the name it is
  given}) under a temporary name beside it, then renames them all to their paths; the
  paths. If a write fails, no temporary file is left and no existing file replaced; an
  OSError is an OutputError naming the file."""
  try:
    with contextlib.ExitStack() as renames:
      for path, write in writers.items():
        partial = renames.enter_context(atomic_path(path))
        try:
          write(os.fspath(partial))
        except OSError as e:
          raise cannot_write(path, e) from None
  except OSError as e:  # a rename
    if isinstance(e, UserError):
      raise
    raise cannot_write((e.filename or ', '.join(writers)).removesuffix('.tmp'),
                        e) from None
  return list(writers)


def check_new_directory(option: str, path: str) -> None:
  """OutputError unless `path` can become a new directory: not there (its nearest
  existing parent a writable directory) or an empty directory. A directory that holds
  anything is refused: nothing in it is replaced or removed."""
  if not is_local(path):
    path = epath.Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
      raise OutputError(f'{option} {path}: exists and is not an empty directory; give a '
                        f'new or empty one')
    return
  if os.path.lexists(path) and not os.path.isdir(path):
    raise OutputError(f'{option} {path}: a file, not a directory; give a new or empty '
                      f'directory')
  if os.path.isdir(path) and os.listdir(path):
    held = sorted(os.listdir(path))
    raise OutputError(f'{option} {path}: the directory holds files ({", ".join(held[:4])}'
                      f'{", ..." if len(held) > 4 else ""}), which would be replaced; give '
                      f'a new or empty directory')
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  _check_writable_directory(option, parent)


@contextlib.contextmanager
def new_directory(option: str, path: str) -> Iterator[str]:
  """A directory to fill in place of `path` (as `check_new_directory` allows): a new
  one beside it, `path.tmp` (missing parents made), renamed to `path` when the block
  ends, removed if it raises; an OSError is an OutputError naming `path`. (A URL is
  filled in place: an object store renames no directory at once.)"""
  if not is_local(path):
    yield path
    return
  path = os.path.abspath(path)
  partial = path + '.tmp'
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkdir(partial)
  except FileExistsError:
    raise OutputError(f'{option} {path}: {partial} exists (left by a run that was '
                      f'stopped?); remove it') from None
  except OSError as e:
    raise OutputError(f'{option} {path}: cannot be written: {e.strerror or e}') from None
  try:
    yield partial
    os.rename(partial, path)  # onto nothing or an empty directory, else it fails
  except BaseException as e:
    shutil.rmtree(partial, ignore_errors=True)
    if isinstance(e, OSError) and not isinstance(e, UserError):
      raise OutputError(f'{option} {path}: cannot be written: {e.strerror or e}') from None
    raise
