"""Decoding entries into work files: `decode_entry`, and `Decoders`, worker processes
sent one entry at a time, so that a video that kills its worker is failed by name."""
import contextlib
import dataclasses
import functools
import multiprocessing
import os
import signal
import traceback
from multiprocessing import connection
from typing import Callable, Dict, List, Optional

from vivit import video
from vivit.errors import DataError, VideoError
from vivit.datasets.entries import Entry
from vivit.datasets.work_files import FAILED, RUNNING, forget, kills, read_json, \
    record_failure, remove, save_clip, work_file, write_atomic, write_json

WORKER_DIED = 'worker died'
READY = 'ready'
# For tests only: a decoding worker kills itself (SIGKILL, as the OOM killer does)
# when it starts on the entry with this key.
KILL_WORKER_ON = 'VIVIT_TEST_KILL_WORKER_ON'


def decode_entry(entry: Entry, resample: video.Resample, work_dir: str,
                 threads: bool = False) -> Optional[dict]:
  """{'frames', 'fps'} of the entry, or None once the reason it failed is saved in
  `work_dir` for the report: nothing a video file can contain stops preparation."""
  try:
    clip = entry.read(resample, threads=threads)
  except VideoError as e:
    reason = str(e)
  except Exception as e:  # pylint: disable=broad-except
    reason = f'{type(e).__name__}: {" ".join(str(e).split())}'
  else:
    return {'frames': clip.frames, 'fps': clip.fps}
  record_failure(work_dir, entry, reason)
  return None


def _decode_to_work_file(entry: Entry, resample: video.Resample, work_dir: str,
                         threads: bool) -> bool:
  """Decodes one entry into its work file; False if it failed. A marker names the
  process while it decodes, keeping the count of whole runs killed while decoding it
  that an earlier marker holds (see builder.py's `_decode_all`)."""
  running = work_file(work_dir, entry, RUNNING)
  remove(work_file(work_dir, entry, FAILED))  # an earlier attempt's
  write_json(work_dir, running, {'split': entry.split, 'id': entry.key, 'pid': os.getpid(),
                                 'kills': kills(read_json(running))}, durable=False)
  if os.environ.get(KILL_WORKER_ON) == entry.key:
    os.kill(os.getpid(), signal.SIGKILL)
  record = decode_entry(entry, resample, work_dir, threads)
  if record is not None:
    write_atomic(work_dir, work_file(work_dir, entry),
                 functools.partial(save_clip, **record))
  remove(running)
  return record is not None


def _die_with(owner: int) -> None:
  """Linux: this process is killed when `owner` dies, so that no worker of a killed
  run goes on decoding (and writing) on its own."""
  with contextlib.suppress(Exception):
    import ctypes
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
  if os.getppid() != owner:
    os._exit(0)


def _worker(conn, owner: int, resample: video.Resample, work_dir: str,
            threads: bool) -> None:
  """A decoding process: says READY, then answers each entry it is sent with
  `_decode_to_work_file`'s result, or (a bug, a full disk) the exception and its
  traceback; stops at None."""
  _die_with(owner)
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # on Ctrl-C the owner stops its workers
  conn.send(READY)
  while True:
    try:
      entry = conn.recv()
    except EOFError:  # the owner is gone
      return
    if entry is None:
      return
    try:
      conn.send(_decode_to_work_file(entry, resample, work_dir, threads))
    except Exception as e:  # pylint: disable=broad-except
      try:
        conn.send((e, traceback.format_exc()))
      except Exception:  # pylint: disable=broad-except  # it does not pickle
        conn.send((RuntimeError(f'{type(e).__name__}: {e}'), traceback.format_exc()))


class _WorkerTraceback(Exception):
  """Where an exception raised in a decoding worker came from."""


def _how(exitcode: int) -> str:
  """How a process with `exitcode` ended: 'exit code 1', 'signal 9 (SIGKILL, ...)'."""
  if exitcode >= 0:
    return f'exit code {exitcode}'
  try:
    name = signal.Signals(-exitcode).name
  except ValueError:
    name = 'unknown signal'
  hint = ', out of memory?' if -exitcode == getattr(signal, 'SIGKILL', None) else ''
  return f'signal {-exitcode} ({name}{hint})'


def death_reason(exitcode: int) -> str:
  """The failure of a video whose worker ended with `exitcode` while this run lived."""
  return f'{WORKER_DIED}: {_how(exitcode)}'


@dataclasses.dataclass
class _Worker:
  """A decoding process, as its owner sees it."""
  process: multiprocessing.Process
  ready: bool = False  # it said READY
  entry: Optional[Entry] = None  # sent to it and not answered yet
  gone: bool = False  # its end of the pipe is closed


class Decoders:
  """`count` worker processes that decode entries into work files, each sent one
  entry at a time; a worker that dies fails its entry and is replaced (see
  `VideoDatasetBuilder._decode_all`). `finished(ok)` is called once per entry."""

  def __init__(self, count: int, resample: video.Resample, work_dir: str,
               finished: Callable[[bool], None]):
    self.count, self.resample, self.work_dir = count, resample, work_dir
    self.finished = finished
    self.todo: List[Entry] = []
    self.workers: Dict[connection.Connection, _Worker] = {}

  def run(self, entries: List[Entry]) -> None:
    self.todo = entries[::-1]
    try:
      for _ in range(min(self.count, len(self.todo))):
        self._start()
      while self.workers:
        self._wait()
    finally:
      self._stop()

  def _start(self) -> None:
    context = multiprocessing.get_context('spawn')
    ours, theirs = context.Pipe()
    process = context.Process(target=_worker, daemon=True, args=(
        theirs, os.getpid(), self.resample, self.work_dir, self.count == 1))
    process.start()
    theirs.close()
    self.workers[ours] = _Worker(process)

  def _wait(self) -> None:
    workers = self.workers
    ready = connection.wait([c for c, w in workers.items() if not w.gone]
                            + [w.process.sentinel for w in workers.values()])
    for conn in [c for c in workers if c in ready]:
      self._receive(conn)
    for conn in [c for c, w in workers.items() if w.process.sentinel in ready]:
      self._bury(conn)

  def _give(self, conn: connection.Connection) -> None:
    """Sends the worker the next entry, or None: stop."""
    worker = self.workers[conn]
    worker.entry = self.todo.pop() if self.todo else None
    try:
      conn.send(worker.entry)
    except OSError:  # it is dead and never got it
      if worker.entry is not None:
        self.todo.append(worker.entry)
      worker.entry = None

  def _receive(self, conn: connection.Connection) -> None:
    worker = self.workers[conn]
    try:
      message = conn.recv()
    except (EOFError, OSError):
      worker.gone = True
      return
    if isinstance(message, tuple):
      error, trace = message
      raise error from _WorkerTraceback(trace)
    if message != READY:
      self.finished(message)
    worker.ready = True
    self._give(conn)

  def _bury(self, conn: connection.Connection) -> None:
    """A worker has ended: fails the entry it was decoding, if any, and replaces it."""
    worker = self.workers[conn]
    while not worker.gone and conn.poll():  # what it sent before it died
      self._receive(conn)
    del self.workers[conn]
    conn.close()
    process = worker.process
    process.join()
    if worker.entry is not None:
      record_failure(self.work_dir, worker.entry, death_reason(process.exitcode))
      forget(self.work_dir, worker.entry, process.pid)
      self.finished(False)
    elif not worker.ready:
      raise DataError(f'{self.work_dir}: a decoding worker could not start '
                      f'({_how(process.exitcode)}); see its error above')
    if self.todo:
      self._start()

  def _stop(self) -> None:
    """Ends the workers still running (this run stops early: not for their videos)."""
    for conn, worker in self.workers.items():
      worker.process.kill()
      worker.process.join()
      conn.close()
      if worker.entry is not None:
        forget(self.work_dir, worker.entry, worker.process.pid)
    self.workers.clear()
