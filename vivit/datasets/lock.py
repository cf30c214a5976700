"""The lock of a dataset being prepared: `DATA_DIR/<name>/prepare.lock`.

An OS file lock (flock): the kernel releases it when its holder dies, however it
dies (kill -9, the OOM killer, a lost machine's NFS lease), so a killed run leaves
nothing to clean up and the next run takes the dataset over. A second prepare of the
same dataset waits for the first, saying once whom it waits for, then goes on: it
finds the dataset prepared (nothing to do), or the first run's work to resume if
that run was killed. The file stays (removing it would let a waiting run and a new
one lock two different files); it names its last holder.
"""
import contextlib
import os
import socket
import sys
import time
from typing import Iterator

from vivit.errors import OutputError

LOCK = 'prepare.lock'


def _holder(fd: int) -> str:
  """Who holds the lock, as the holder wrote it ('pid 12 on host, since ...')."""
  try:
    text = os.pread(fd, 200, 0).decode('utf-8', 'replace').strip()
  except OSError:
    text = ''
  return text or 'another process'


@contextlib.contextmanager
def preparing(dataset_dir: str, name: str) -> Iterator[None]:
  """Holds the lock of the dataset in `dataset_dir` for the block, after waiting for
  the run that holds it (one line on stderr naming it)."""
  import fcntl  # pylint: disable=import-outside-toplevel  # POSIX only
  path = os.path.join(dataset_dir, LOCK)
  try:
    os.makedirs(dataset_dir, exist_ok=True)
    # O_CLOEXEC: a process started from this one must not hold the lock on after
    # this one is killed (decoding workers are spawned, and Python's own files are
    # not inherited either (PEP 446): said here because it matters).
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
  except OSError as e:
    raise OutputError(f'{path}: cannot create the lock of {name} ({e.strerror})') from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(f'{name}: waiting for the run that is preparing it ({_holder(fd)}; lock '
            f'{path}) to finish', file=sys.stderr, flush=True)
      fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()}, since '
              f'{time.strftime("%Y-%m-%d %H:%M:%S")}\n'.encode(), 0)
    yield
  finally:
    os.close(fd)  # releases the lock
