"""Exclusive locks that die with their holder: an OS file lock (flock) on a file that
names its last holder. The kernel releases it however the holder dies (kill -9, the
OOM killer, a lost machine's NFS lease), so a killed run leaves nothing to clean up
and the next one takes over. The file stays when released (removing it would let a
waiting process and a new one lock two different files).

Used for a training workdir (`WORKDIR/.lock`: a second training is refused) and a
dataset being prepared (`DATA_DIR/<name>/prepare.lock`: a second prepare waits).
"""
import contextlib
import os
import socket
import time
from typing import Callable, Iterator


def _holder(fd: int) -> str:
  """Who holds the lock, as the holder wrote it ('pid 12 on host, since ...')."""
  try:
    text = os.pread(fd, 200, 0).decode('utf-8', 'replace').strip()
  except OSError:
    text = ''
  return text or 'another process'


@contextlib.contextmanager
def held(path: str, on_busy: Callable[[str], None],
         cannot_write: Callable[[OSError], Exception]) -> Iterator[None]:
  """Holds the lock on the file `path` (made with its directories if missing) for the
  block. When another process holds it, `on_busy(holder)` is called with the line the
  holder wrote: it raises to refuse, or returns to wait for the lock. A lock file that
  cannot be made or written raises `cannot_write(error)`."""
  import fcntl  # pylint: disable=import-outside-toplevel  # POSIX only
  try:
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    # O_CLOEXEC: a process started from this one must not hold the lock on after this
    # one is killed (Python's own files are not inherited either (PEP 446): said here
    # because it matters).
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
  except OSError as e:
    raise cannot_write(e) from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      on_busy(_holder(fd))
      fcntl.flock(fd, fcntl.LOCK_EX)
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f'pid {os.getpid()} on {socket.gethostname()}, since '
                f'{time.strftime("%Y-%m-%d %H:%M:%S")}'.encode(), 0)
    except OSError as e:
      raise cannot_write(e) from None
    yield
  finally:
    os.close(fd)  # releases the lock
