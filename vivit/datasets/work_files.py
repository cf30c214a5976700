"""Per-video work files: where an entry's decoded frames (.npz), failure record or
running marker is kept; writing them whole, synced, only inside the work dir; reading."""
import contextlib
import hashlib
import json
import os
import zipfile
from typing import Callable, Optional, Sequence

import numpy as np

from vivit.errors import DataError
from vivit.datasets.entries import Entry

# What the work dir holds per entry: its decoded frames, why it failed, or (while a
# worker decodes it, or after a run was killed while one did) which worker and how
# many whole runs were killed while decoding it.
DECODED, FAILED, RUNNING = '.npz', '.error.json', '.running.json'
WORK_ARRAYS = ('jpeg', 'offsets', 'fps')


def inside(root: str, path: str) -> str:
  """`path`, after checking that it resolves (symbolic links followed) to a place
  under `root`: nothing the builder writes may land elsewhere."""
  real_root, real = os.path.realpath(root), os.path.realpath(path)
  if os.path.commonpath([real_root, real]) != real_root:
    raise DataError(f'{path}: resolves to {real}, outside the work directory '
                    f'{real_root}; not writing there')
  return path


def work_file(work_dir: str, entry: Entry, suffix: str = DECODED) -> str:
  """Where the entry's decoded frames, failure or running marker (`suffix`) is kept."""
  digest = hashlib.sha1(f'{entry.split}/{entry.key}'.encode()).hexdigest()
  return os.path.join(work_dir, entry.split, digest[:2], digest + suffix)


def remove(path: str) -> None:
  with contextlib.suppress(FileNotFoundError):
    os.remove(path)


def _sync_directory(path: str) -> None:
  """Makes a rename in `path` survive a power loss, where the OS allows it."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:  # Windows cannot open a directory
    return
  try:
    os.fsync(fd)
  except OSError:  # nor can some filesystems sync one
    pass
  finally:
    os.close(fd)


def write_atomic(work_dir: str, path: str, write: Callable, durable: bool = True) -> None:
  """Writes `path`, under `work_dir`, whole or not at all: `write(file)` fills a
  partial file that is synced to disk (if `durable`) before it is renamed into place,
  so that a power loss cannot leave an empty file that counts as written."""
  directory = inside(work_dir, os.path.dirname(path))
  os.makedirs(directory, exist_ok=True)
  partial = f'{path}.{os.getpid()}.partial'
  remove(partial)
  # O_EXCL: never through a file or link that someone else put there.
  fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with open(fd, 'wb') as f:
      write(f)
      if durable:
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
  except BaseException:
    remove(partial)
    raise
  if durable:
    _sync_directory(directory)


def write_json(work_dir: str, path: str, value: dict, durable: bool = True,
               indent: Optional[int] = None) -> None:
  write_atomic(work_dir, path, lambda f: f.write(json.dumps(value, indent=indent).encode()),
               durable)


def read_json(path: str) -> Optional[dict]:
  """The JSON object in `path`; None if there is none (missing, cut short, not JSON)."""
  try:
    with open(path, 'rb') as f:
      value = json.load(f)
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def kills(marker: Optional[dict]) -> int:
  """How many whole runs were killed while decoding the entry whose running marker
  is `marker` (0: none, or no marker)."""
  count = (marker or {}).get('kills')
  return count if isinstance(count, int) and count > 0 else 0


def save_clip(f, frames: Sequence[bytes], fps: float) -> None:
  offsets = np.cumsum([0] + [len(frame) for frame in frames], dtype=np.int64)
  np.savez(f, jpeg=np.frombuffer(b''.join(frames), np.uint8), offsets=offsets,
           fps=np.float64(fps))


def is_work_file(path: str) -> bool:
  """Whether `path` is an archive of the work file's arrays (only its index is read)."""
  try:
    with zipfile.ZipFile(path) as archive:
      return sorted(archive.namelist()) == sorted(f'{n}.npy' for n in WORK_ARRAYS)
  except (OSError, zipfile.BadZipFile):
    return False


def load_clip(path: str) -> dict:
  """{'frames', 'fps'} of a work file; DataError if it is not one. Loads arrays only:
  nothing in the file can make this run code."""
  try:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
      raise ValueError('not an .npz archive')
    with data:
      jpeg, offsets, fps = (data[name] for name in WORK_ARRAYS)
    if (jpeg.dtype != np.uint8 or jpeg.ndim != 1 or offsets.dtype != np.int64
        or offsets.ndim != 1 or not offsets.size or offsets[0] != 0
        or offsets[-1] != jpeg.size or np.any(np.diff(offsets) < 0) or fps.shape != ()):
      raise ValueError('arrays of the wrong type or size')
  except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
    raise DataError(f'{path}: not a work file ({e})') from None
  frames = [jpeg[a:b].tobytes() for a, b in zip(offsets[:-1], offsets[1:])]
  return {'frames': frames, 'fps': float(fps)}


def record_failure(work_dir: str, entry: Entry, reason: str) -> None:
  failure = {'split': entry.split, 'id': entry.key, 'path': entry.path, 'reason': reason}
  write_json(work_dir, work_file(work_dir, entry, FAILED), failure)


def forget(work_dir: str, entry: Entry, pid: int) -> None:
  """Removes the marker and the partial files that process `pid` left for `entry`."""
  remove(work_file(work_dir, entry, RUNNING))
  for suffix in (DECODED, FAILED, RUNNING):
    remove(f'{work_file(work_dir, entry, suffix)}.{pid}.partial')
