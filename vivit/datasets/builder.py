"""The TFDS builder every real video dataset shares, and `prepare_dataset`, which runs it.

A dataset module (kinetics.py, ssv2.py, ...) only reads its official annotation
files into `Entry`s (one per clip: split, labels, where the video is); this builder
turns them into a TFDS dataset of JPEG frames at a fixed fps and short side, stored
as ArrayRecord so that training can read any example by index.

Preparation runs in two stages so that it survives being killed:
1. decode: every video is decoded by `--workers` processes into a per-video work
   file in `DATA_DIR/<name>/_prepare/` (an .npz of the JPEG bytes: data, never
   code), written atomically and synced to disk; a bad video leaves a failure file
   instead, and a video that kills its worker (out of memory, decoder crash) is
   recorded as failed while the others go on (see `_decode_all`). A restarted run
   decodes only the videos without a work file.
2. write: TFDS writes the dataset from those files, then the work files go.
With `beam=True` both stages are one Apache Beam pipeline (TFDS's Beam support),
for preparing Kinetics-700-sized datasets on Dataflow, Flink or Spark.
"""
import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import sys
import traceback
import zipfile
from collections import Counter
from multiprocessing import connection
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from vivit.errors import AnnotationError, ConfigError, DataError, VideoError
from vivit.datasets import decode

WORK_DIR = '_prepare'
REPORT = 'prepare_report.json'
VIDEO_EXTENSIONS = ('.mp4', '.webm', '.mkv', '.avi', '.mov', '.m4v', '.mpg', '.mpeg')
# Split names become directory and file names.
SPLIT_NAME = re.compile(r'[A-Za-z0-9_-]+')
# What the work dir holds per entry: its decoded frames, why it failed, or (while a
# worker decodes it) which worker.
DECODED, FAILED, RUNNING = '.npz', '.error.json', '.running.json'
WORK_ARRAYS = ('jpeg', 'offsets', 'fps')
WORKER_DIED = 'worker died'
# For tests only: a decoding worker kills itself (SIGKILL, as the OOM killer does)
# when it starts on the entry with this key.
KILL_WORKER_ON = 'VIVIT_TEST_KILL_WORKER_ON'


@dataclasses.dataclass(frozen=True)
class Entry:
  """One clip of the dataset, as its annotation file describes it.

  `labels` maps each label feature ('label', or 'verb' and 'noun') to its class
  name. The frames come from `path` (the whole file, or [start, stop) seconds of
  it) or, for pre-extracted frames, from `frame_files` at `frame_fps`. `path` is
  None when no video file was found for the entry."""
  key: str
  split: str
  labels: Tuple[Tuple[str, str], ...]
  path: Optional[str]
  start: Optional[float] = None
  stop: Optional[float] = None
  frame_files: Optional[Tuple[str, ...]] = None
  frame_fps: Optional[float] = None
  # Cut [start, stop) only from a file longer than that (see decode.read_video).
  only_if_longer: bool = False

  def read(self, resample: decode.Resample, threads: bool = False) -> decode.Clip:
    if self.frame_files is not None:
      return decode.read_frame_files(self.frame_files, self.frame_fps, resample)
    if self.path is None:
      raise VideoError('video file not found')
    return decode.read_video(self.path, resample, start=self.start, stop=self.stop,
                             only_if_longer=self.only_if_longer, threads=threads)


def index_files(root: str, extensions: Sequence[str]) -> Dict[str, str]:
  """File stem -> path for every file under `root` with one of `extensions`
  (case-insensitive); the first in sorted order wins when a stem repeats."""
  found = {}
  extensions = tuple(e.lower() for e in extensions)
  for directory, subdirs, files in os.walk(root):
    subdirs.sort()
    for name in sorted(files):
      stem, ext = os.path.splitext(name)
      if ext.lower() in extensions:
        found.setdefault(stem, os.path.join(directory, name))
  return found


def check_split(split: str, where: str) -> str:
  """`split`, if it can name a directory: letters, digits, _ and - only."""
  if not SPLIT_NAME.fullmatch(split):
    raise AnnotationError(f'{where}: split {split!r} is not a name of letters, digits, '
                          f'_ and -')
  return split


def inside(root: str, path: str) -> str:
  """`path`, after checking that it resolves (symbolic links followed) to a place
  under `root`: nothing the builder writes may land elsewhere."""
  real_root, real = os.path.realpath(root), os.path.realpath(path)
  if os.path.commonpath([real_root, real]) != real_root:
    raise DataError(f'{path}: resolves to {real}, outside the work directory '
                    f'{real_root}; not writing there')
  return path


def _work_file(work_dir: str, entry: Entry, suffix: str = DECODED) -> str:
  """Where the entry's decoded frames, failure or running marker (`suffix`) is kept."""
  digest = hashlib.sha1(f'{entry.split}/{entry.key}'.encode()).hexdigest()
  return os.path.join(work_dir, entry.split, digest[:2], digest + suffix)


def _remove(path: str) -> None:
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


def _write_atomic(work_dir: str, path: str, write: Callable, durable: bool = True) -> None:
  """Writes `path`, under `work_dir`, whole or not at all: `write(file)` fills a
  partial file that is synced to disk (if `durable`) before it is renamed into place,
  so that a power loss cannot leave an empty file that counts as written."""
  directory = inside(work_dir, os.path.dirname(path))
  os.makedirs(directory, exist_ok=True)
  partial = f'{path}.{os.getpid()}.partial'
  _remove(partial)
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
    _remove(partial)
    raise
  if durable:
    _sync_directory(directory)


def _write_json(work_dir: str, path: str, value: dict, durable: bool = True) -> None:
  _write_atomic(work_dir, path, lambda f: f.write(json.dumps(value).encode()), durable)


def _read_json(path: str) -> Optional[dict]:
  """The JSON object in `path`; None if there is none (missing, cut short, not JSON)."""
  try:
    with open(path, 'rb') as f:
      value = json.load(f)
  except (OSError, ValueError):
    return None
  return value if isinstance(value, dict) else None


def _save_clip(f, frames: Sequence[bytes], fps: float) -> None:
  offsets = np.cumsum([0] + [len(frame) for frame in frames], dtype=np.int64)
  np.savez(f, jpeg=np.frombuffer(b''.join(frames), np.uint8), offsets=offsets,
           fps=np.float64(fps))


def _is_work_file(path: str) -> bool:
  """Whether `path` is an archive of the work file's arrays (only its index is read)."""
  try:
    with zipfile.ZipFile(path) as archive:
      return sorted(archive.namelist()) == sorted(f'{n}.npy' for n in WORK_ARRAYS)
  except (OSError, zipfile.BadZipFile):
    return False


def _load_clip(path: str) -> dict:
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


def _record_failure(work_dir: str, entry: Entry, reason: str) -> None:
  failure = {'split': entry.split, 'id': entry.key, 'path': entry.path, 'reason': reason}
  _write_json(work_dir, _work_file(work_dir, entry, FAILED), failure)


def decode_entry(entry: Entry, resample: decode.Resample, work_dir: str,
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
  _record_failure(work_dir, entry, reason)
  return None


def _decode_to_work_file(entry: Entry, resample: decode.Resample, work_dir: str,
                         threads: bool, alone: bool) -> bool:
  """Decodes one entry into its work file; False if it failed. A marker names the
  process while it decodes (`alone`: with no other video in flight; see `_decode_all`)."""
  running = _work_file(work_dir, entry, RUNNING)
  _remove(_work_file(work_dir, entry, FAILED))  # an earlier attempt's
  _write_json(work_dir, running, {'split': entry.split, 'id': entry.key,
                                  'pid': os.getpid(), 'alone': alone}, durable=False)
  if os.environ.get(KILL_WORKER_ON) == entry.key:
    os.kill(os.getpid(), signal.SIGKILL)
  record = decode_entry(entry, resample, work_dir, threads)
  if record is not None:
    _write_atomic(work_dir, _work_file(work_dir, entry),
                  functools.partial(_save_clip, **record))
  _remove(running)
  return record is not None


def _die_with(owner: int) -> None:
  """Linux: this process is killed when `owner` dies, so that no worker of a killed
  run goes on decoding (and writing) on its own."""
  with contextlib.suppress(Exception):
    import ctypes
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
  if os.getppid() != owner:
    os._exit(0)


READY = 'ready'


def _worker(conn, owner: int, resample: decode.Resample, work_dir: str, threads: bool,
            alone: bool) -> None:
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
      conn.send(_decode_to_work_file(entry, resample, work_dir, threads, alone))
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


def death_reason(exitcode: Optional[int]) -> str:
  """The failure of a video whose worker ended with `exitcode` (None: not known)."""
  if exitcode is None:
    return (f'{WORKER_DIED}: prepare was killed twice while decoding it, the second '
            f'time alone (out of memory?)')
  return f'{WORKER_DIED}: {_how(exitcode)}'


@dataclasses.dataclass
class _Worker:
  """A decoding process, as its owner sees it."""
  process: multiprocessing.Process
  ready: bool = False  # it said READY
  entry: Optional[Entry] = None  # sent to it and not answered yet
  gone: bool = False  # its end of the pipe is closed


def _forget(work_dir: str, entry: Entry, pid: int) -> None:
  """Removes the marker and the partial files that process `pid` left for `entry`."""
  _remove(_work_file(work_dir, entry, RUNNING))
  for suffix in (DECODED, FAILED, RUNNING):
    _remove(f'{_work_file(work_dir, entry, suffix)}.{pid}.partial')


class _Decoders:
  """`count` worker processes that decode entries into work files, each sent one
  entry at a time; a worker that dies fails its entry and is replaced (see
  `VideoDatasetBuilder._decode_all`). `finished(ok)` is called once per entry."""

  def __init__(self, count: int, resample: decode.Resample, work_dir: str, alone: bool,
               finished: Callable[[bool], None]):
    self.count, self.resample, self.work_dir, self.alone = count, resample, work_dir, alone
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
        theirs, os.getpid(), self.resample, self.work_dir, self.count == 1, self.alone))
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
      _record_failure(self.work_dir, worker.entry, death_reason(process.exitcode))
      _forget(self.work_dir, worker.entry, process.pid)
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
        _forget(self.work_dir, worker.entry, worker.process.pid)
    self.workers.clear()


def _beam_examples(entry: Entry, resample: decode.Resample, work_dir: str):
  """Beam: decode one entry; a bad video leaves a failure file for the report."""
  record = decode_entry(entry, resample, work_dir)
  if record is not None:
    yield entry.key, _example(entry, record)


class VideoDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base TFDS builder of a video classification dataset prepared from its
  official release. Subclasses define `LABEL_FEATURES`, `read_annotations` and the
  `MANUAL_DOWNLOAD_INSTRUCTIONS` (where the official files are)."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  # Examples are read by index in a random order at training time: writing them
  # shuffled would only cost a second copy on disk.
  disable_shuffling = True
  # Label features of every example: 'label', or e.g. ('verb', 'noun').
  LABEL_FEATURES: Tuple[str, ...] = ('label',)
  # Frame rate stored when `prepare --fps` is not given.
  DEFAULT_FPS = 25.0

  def __init__(self, *, videos: Optional[str] = None, annotations: Optional[str] = None,
               resample: Optional[decode.Resample] = None, workers: int = 1,
               beam: bool = False, progress: bool = True, **kwargs):
    kwargs.setdefault('file_format', 'array_record')
    self._entries: Optional[List[Entry]] = None
    self._class_names: Dict[str, List[str]] = {}
    self._resample = resample or decode.Resample(fps=self.DEFAULT_FPS)
    self._workers, self._beam, self._progress = workers, beam, progress
    if annotations is not None or videos is not None:
      self._entries, self._class_names = self.read_annotations(videos, annotations)
      for entry in self._entries:
        check_split(entry.split, f'{self.name}: clip {entry.key}')
    super().__init__(**kwargs)

  # --- what each dataset defines -------------------------------------------------
  @classmethod
  def read_annotations(cls, videos: Optional[str], annotations: Optional[str]
                       ) -> Tuple[List[Entry], Dict[str, List[str]]]:
    """Every clip of every split, and the class names of each label feature."""
    raise NotImplementedError

  # --- TFDS ----------------------------------------------------------------------
  def _info(self) -> tfds.core.DatasetInfo:
    labels = {name: (tfds.features.ClassLabel(names=self._class_names[name])
                     if name in self._class_names else tfds.features.ClassLabel())
              for name in self.LABEL_FEATURES}
    return self.dataset_info_from_configs(
        description=self.__doc__,
        features=tfds.features.FeaturesDict({
            # Frames vary in count and size from video to video.
            'video': tfds.features.Video(shape=(None, None, None, 3),
                                         encoding_format='jpeg'),
            'fps': tfds.features.Scalar(np.float32, doc='stored frames per second'),
            'id': tfds.features.Text(doc='the clip in the official annotations'),
            **labels,
        }),
        metadata=tfds.core.MetadataDict(fps=self._resample.fps,
                                        short_side=self._resample.short_side),
    )

  @property
  def work_dir(self) -> str:
    return os.path.join(self._data_dir_root, self.name, WORK_DIR)

  @property
  def report_path(self) -> str:
    return os.path.join(self._data_dir_root, self.name, REPORT)

  def entries(self) -> List[Entry]:
    if self._entries is None:
      raise ConfigError(f'{self.name}: preparing needs the official annotations '
                        f'(--annotations) and videos (--videos)')
    return self._entries

  def _split_generators(self, dl_manager):
    del dl_manager  # The user downloads the official release.
    by_split: Dict[str, List[Entry]] = {}
    for entry in self.entries():
      by_split.setdefault(entry.split, []).append(entry)
    self.check_work_dir()
    if self._beam:
      import apache_beam as beam
      # Reshuffle so that the runner spreads the decoding over its workers.
      return {split: (beam.Create(entries) | beam.Reshuffle()
                      | beam.FlatMap(_beam_examples, self._resample, self.work_dir))
              for split, entries in by_split.items()}
    self._decode_all(self.entries())
    return {split: self._examples_from_work_files(entries)
            for split, entries in by_split.items()}

  def _generate_examples(self):  # Splits come from `_split_generators`.
    raise NotImplementedError

  def _examples_from_work_files(self, entries: Iterable[Entry]):
    for entry in entries:
      path = _work_file(self.work_dir, entry)
      if os.path.exists(path):
        try:
          record = _load_clip(path)
        except DataError as e:
          _remove(path)
          raise DataError(f'{e}; removed it: run prepare again to decode {entry.key} '
                          f'again') from None
        yield entry.key, _example(entry, record)

  def _decode_all(self, entries: List[Entry]) -> None:
    """Stage 1: every entry without a work file is decoded into one (entries that
    failed before are tried again, but not those that killed their worker).

    A worker that dies (the OOM killer, a decoder crash) takes only its own video
    down: each worker process is sent one entry at a time, so this process knows
    which video a dead worker was decoding and, from its exit status, how it died.
    That video is recorded as failed ("worker died: signal 9 (SIGKILL, ...)"), a new
    worker replaces the dead one and the run goes on; the other workers carry on
    with their videos undisturbed.

    That needs this process alive. So a worker also writes a marker before it
    decodes an entry, removed once the result is written: a marker without a result
    at the start of a run means the run before was killed as a whole (kill -9, a
    power loss, the OOM kill of a whole container) while decoding that video.
    Usually that is no fault of the video, so it is decoded again, but first and
    alone (one worker, nothing else in flight), as its new marker says. Should the
    run be killed again then, the next run finds a marker that says "alone": that
    video kills the whole run, and it is recorded as failed rather than killing
    every run after it. Ctrl-C leaves no marker: the workers ignore it, and this
    process stops them and removes their markers.
    """
    suspects, pending, done = self._take_stock(entries)
    todo = len(suspects) + len(pending)
    if (done or suspects) and self._progress:
      print(f'{self.name}: {done} of {len(entries)} videos were decoded by an earlier '
            f'run; decoding the other {todo}'
            + (f', first, one at a time, the {len(suspects)} it was decoding when it '
               f'was killed' if suspects else ''), file=sys.stderr, flush=True)
    from tqdm import tqdm
    bar = tqdm(total=todo, desc=f'{self.name}: decoding', unit='video',
               disable=not self._progress or not todo, file=sys.stderr, smoothing=0.05)
    failures = 0

    def finished(ok: bool) -> None:
      nonlocal failures
      failures += not ok
      bar.update()
      bar.set_postfix(skipped=failures, refresh=False)
    with bar:
      _Decoders(1, self._resample, self.work_dir, True, finished).run(suspects)
      _Decoders(self._workers, self._resample, self.work_dir, False, finished).run(pending)

  def _take_stock(self, entries: List[Entry]) -> Tuple[List[Entry], List[Entry], int]:
    """What earlier runs left: (entries a killed run was decoding, entries to decode,
    how many are decoded). Removes partial files, work files that are not whole and
    markers of entries with a result; fails an entry that was decoded alone when a
    run was killed (see `_decode_all`)."""
    for directory, _, names in os.walk(self.work_dir):
      for name in names:
        if name.endswith('.partial'):
          _remove(os.path.join(directory, name))
    suspects, pending, done, checked = [], [], 0, set()
    for entry in entries:
      path = _work_file(self.work_dir, entry)
      if os.path.dirname(path) not in checked:
        checked.add(inside(self.work_dir, os.path.dirname(path)))
      running = _work_file(self.work_dir, entry, RUNNING)
      if os.path.exists(path):
        if _is_work_file(path):
          done += 1
          _remove(running)
          continue
        _remove(path)
      failure = _read_json(_work_file(self.work_dir, entry, FAILED))
      if os.path.exists(running) and failure is None:
        if not (_read_json(running) or {}).get('alone'):
          suspects.append(entry)
          continue
        failure = {'reason': death_reason(None)}
        _record_failure(self.work_dir, entry, failure['reason'])
      _remove(running)
      if failure is None or not str(failure.get('reason')).startswith(WORKER_DIED):
        pending.append(entry)
    return suspects, pending, done

  def check_work_dir(self) -> None:
    """A work dir left by a run with other settings is refused, not mixed in."""
    settings = {'fps': self._resample.fps, 'short_side': self._resample.short_side,
                'jpeg_quality': decode.JPEG_QUALITY}
    path = os.path.join(self.work_dir, 'settings.json')
    if os.path.exists(path):
      with open(path) as f:
        earlier = json.load(f)
      if earlier != settings:
        raise DataError(
            f'{self.work_dir} holds an unfinished preparation with {earlier}, not '
            f'{settings}: run prepare again with those settings, or delete it')
    else:
      _write_json(self.work_dir, path, settings)

  def failures(self) -> List[dict]:
    """The entries that were skipped: [{'split', 'id', 'path', 'reason'}]."""
    skipped = []
    for entry in self.entries():
      failure = _read_json(_work_file(self.work_dir, entry, FAILED))
      if failure is not None and not os.path.exists(_work_file(self.work_dir, entry)):
        skipped.append(failure)
    return skipped

  def remove_incomplete(self) -> None:
    """Deletes what a killed run's TFDS writer left (`incomplete.*` directories)."""
    parent = os.path.join(self._data_dir_root, self.name)
    if os.path.isdir(parent):
      for name in os.listdir(parent):
        if name.startswith('incomplete.'):
          shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _example(entry: Entry, record: dict) -> dict:
  return {'video': record['frames'], 'fps': np.float32(record['fps']), 'id': entry.key,
          **dict(entry.labels)}


def read_csv(path: str, required: Sequence[str], header: bool = True):
  """Rows of a CSV as (line number, dict by column) with a header, or (line number,
  list) without; AnnotationError naming the file when required columns are missing."""
  import csv
  if not os.path.exists(path):
    raise AnnotationError(f'{path}: file not found')
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.reader(f)
    if not header:
      return [(i, row) for i, row in enumerate(reader, 1) if row]
    columns = [c.strip() for c in next(reader, [])]
    missing = [c for c in required if c not in columns]
    if missing:
      raise AnnotationError(f'{path}:1: expected a header with columns '
                            f'{",".join(required)}; got {",".join(columns) or "nothing"}')
    return [(i, dict(zip(columns, (v.strip() for v in row))))
            for i, row in enumerate(reader, 2) if row]


def prepare_dataset(builder_cls: type, *, data_dir: str, videos: str,
                    annotations: Optional[str], resample: decode.Resample, workers: int = 1,
                    beam_options: Optional[str] = None, keep_work: bool = False
                    ) -> Tuple[VideoDatasetBuilder, dict]:
  """Prepares the dataset (stage 1 and 2, see above; with Apache Beam when
  `beam_options` is a string) and writes the report. Returns the builder and the
  report, {} when the dataset was already there."""
  existing = builder_cls(data_dir=data_dir)
  if existing.is_prepared():
    stored = decode.Resample(fps=existing.info.metadata['fps'],
                             short_side=existing.info.metadata['short_side'])
    if stored != resample:
      raise DataError(f'{existing.data_dir} already holds {existing.name} prepared with '
                      f'fps={stored.fps:g}, short_side={stored.short_side}; use another '
                      f'--data_dir for fps={resample.fps:g}, short_side={resample.short_side}')
    if not os.path.isdir(existing.work_dir):
      sizes = ', '.join(f'{s} {v.num_examples}' for s, v in existing.info.splits.items())
      print(f'{existing.name} is already prepared in {existing.data_dir} ({sizes}); '
            f'nothing to do')
      return existing, {}
  builder = builder_cls(data_dir=data_dir, videos=videos, annotations=annotations,
                        resample=resample, workers=workers, beam=beam_options is not None)
  entries = builder.entries()
  per_split = Counter(e.split for e in entries)
  not_found = sum(e.path is None for e in entries)
  classes = ', '.join(f'{len(builder.info.features[name].names)} '
                      f'{"" if name == "label" else name + " "}classes'
                      for name in builder.LABEL_FEATURES)
  print(f'{builder.name}: {len(entries)} clips ('
        + ', '.join(f'{s} {n}' for s, n in per_split.items()) + f'), {classes}; '
        f'{not_found} not found under {videos}; storing {resample.fps:g} fps, '
        f'short side {resample.short_side or "as is"}', flush=True)
  if not builder.is_prepared():  # else a run stopped after writing it: just report
    builder.remove_incomplete()
    download_config = None
    if beam_options is not None:
      from apache_beam.options.pipeline_options import PipelineOptions
      download_config = tfds.download.DownloadConfig(
          beam_options=PipelineOptions(beam_options.split()))
    builder.download_and_prepare(download_config=download_config)

  report = {'dataset': builder.name, 'data_dir': builder.data_dir,
            'fps': resample.fps, 'short_side': resample.short_side,
            'clips_in_annotations': dict(per_split),
            'examples': {s: v.num_examples for s, v in builder.info.splits.items()},
            'skipped': builder.failures()}
  with open(builder.report_path, 'w') as f:
    json.dump(report, f, indent=1)
  if not keep_work:
    shutil.rmtree(builder.work_dir, ignore_errors=True)
  return builder, report
