"""The TFDS builder every real video dataset shares, and `prepare_dataset`, which runs it.

A dataset module (kinetics.py, ssv2.py, ...) only reads its official annotation
files into `Entry`s (one per clip: split, labels, where the video is); this builder
turns them into a TFDS dataset of JPEG frames at a fixed fps and short side, stored
as ArrayRecord so that training can read any example by index.

Preparation runs in two stages so that it survives being killed:
1. decode: every video is decoded (`--workers` processes) into a per-video file in
   `DATA_DIR/<name>/_prepare/`, written atomically; a bad video leaves a failure
   marker instead. A restarted run decodes only the videos without a file.
2. write: TFDS writes the dataset from those files, then the work files go.
With `beam=True` both stages are one Apache Beam pipeline (TFDS's Beam support),
for preparing Kinetics-700-sized datasets on Dataflow, Flink or Spark.
"""
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import multiprocessing
import os
import pickle
import shutil
import sys
from collections import Counter
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from vivit.errors import AnnotationError, ConfigError, DataError, VideoError
from vivit.datasets import decode

WORK_DIR = '_prepare'
REPORT = 'prepare_report.json'
VIDEO_EXTENSIONS = ('.mp4', '.webm', '.mkv', '.avi', '.mov', '.m4v', '.mpg', '.mpeg')


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


def _work_file(work_dir: str, entry: Entry, suffix: str = '.pkl') -> str:
  """Where the decoded entry (`.pkl`) or its failure (`.error.json`) is kept."""
  digest = hashlib.sha1(f'{entry.split}/{entry.key}'.encode()).hexdigest()
  return os.path.join(work_dir, entry.split, digest[:2], digest + suffix)


def _write_atomic(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  partial = f'{path}.{os.getpid()}.partial'
  with open(partial, 'wb') as f:
    f.write(data)
  os.replace(partial, path)


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
  failure = {'split': entry.split, 'id': entry.key, 'path': entry.path, 'reason': reason}
  _write_atomic(_work_file(work_dir, entry, '.error.json'), json.dumps(failure).encode())
  return None


def _decode_to_work_file(entry: Entry, resample: decode.Resample, work_dir: str,
                         threads: bool) -> bool:
  """Worker process: decodes one entry into its work file; False if it failed."""
  record = decode_entry(entry, resample, work_dir, threads)
  if record is not None:
    _write_atomic(_work_file(work_dir, entry), pickle.dumps(record, pickle.HIGHEST_PROTOCOL))
  return record is not None


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
        with open(path, 'rb') as f:
          yield entry.key, _example(entry, pickle.load(f))

  def _decode_all(self, entries: List[Entry]) -> None:
    """Stage 1: every entry without a work file is decoded into one (entries that
    failed before are tried again)."""
    pending = [e for e in entries if not os.path.exists(_work_file(self.work_dir, e))]
    done = len(entries) - len(pending)
    if done and self._progress:
      print(f'{self.name}: {done} of {len(entries)} videos were decoded by an earlier '
            f'run; decoding the other {len(pending)}', file=sys.stderr, flush=True)
    decode_one = functools.partial(_decode_to_work_file, resample=self._resample,
                                   work_dir=self.work_dir, threads=self._workers == 1)
    from tqdm import tqdm
    bar = tqdm(total=len(pending), desc=f'{self.name}: decoding', unit='video',
               disable=not self._progress or not pending, file=sys.stderr, smoothing=0.05)
    failures = 0
    with bar, contextlib.ExitStack() as stack:
      if self._workers == 1:
        results = map(decode_one, pending)
      else:
        pool = concurrent.futures.ProcessPoolExecutor(
            self._workers, mp_context=multiprocessing.get_context('spawn'))
        stack.callback(pool.shutdown, cancel_futures=True)
        futures = [pool.submit(decode_one, entry) for entry in pending]
        results = (f.result() for f in concurrent.futures.as_completed(futures))
      try:
        for ok in results:
          failures += not ok
          bar.update()
          bar.set_postfix(skipped=failures, refresh=False)
      except concurrent.futures.BrokenExecutor:
        raise RuntimeError('a decoding worker died (out of memory?); run prepare again '
                           'to continue where it stopped') from None

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
      os.makedirs(self.work_dir, exist_ok=True)
      with open(path, 'w') as f:
        json.dump(settings, f)

  def failures(self) -> List[dict]:
    """The entries that were skipped: [{'split', 'id', 'path', 'reason'}]."""
    skipped = []
    for entry in self.entries():
      path = _work_file(self.work_dir, entry, '.error.json')
      if os.path.exists(path) and not os.path.exists(_work_file(self.work_dir, entry)):
        with open(path) as f:
          skipped.append(json.load(f))
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
