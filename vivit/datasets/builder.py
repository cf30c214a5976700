"""The TFDS builder every real video dataset shares, and `prepare_dataset`, which runs it.

A dataset module (kinetics.py, ssv2.py, ...) only reads its official annotation
files into `Entry`s (entries.py), one per clip: split, labels, where the video is;
this builder turns them into a TFDS dataset of JPEG frames at a fixed fps and short
side, stored as ArrayRecord so that training can read any example by index.

Preparation runs in two stages so that it survives being killed:
1. decode: every video is decoded by `--workers` processes (decoders.py) into a
   per-video work file in `DATA_DIR/<name>/_prepare/` (work_files.py: an .npz of
   the JPEG bytes, data, never code), written atomically and synced to disk; a bad
   video leaves a failure file instead, and a video that kills its worker (out of
   memory, decoder crash) is recorded as failed while the others go on (see
   `_decode_all`). A restarted run decodes only the videos without a work file.
2. write: TFDS writes the dataset from those files, then the work files go.
With `beam=True` both stages are one Apache Beam pipeline (TFDS's Beam support),
for preparing Kinetics-700-sized datasets on Dataflow, Flink or Spark.

A dataset records its sources (the videos directory, the annotations, a digest of
the annotations' bytes or of a tree's listing) in its metadata, and an unfinished
one in its work dir: a prepare from other sources is refused rather than taken
for done, until `rebuild` deletes what is there.
"""
import json
import os
import re
import shutil
import sys
from collections import Counter
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from vivit import video
from vivit.errors import ConfigError, DataError
from vivit.datasets.decoders import WORKER_DIED, Decoders, death_reason, decode_entry
from vivit.datasets.entries import Entry, check_class_names, check_entries, check_split
from vivit.datasets.provenance import check_sources, digest_files
from vivit.datasets.work_files import DECODED, FAILED, RUNNING, inside, is_work_file, \
    load_clip, read_json, record_failure, remove, work_file, write_json

WORK_DIR = '_prepare'
REPORT = 'prepare_report.json'
SOURCES = 'sources.json'  # in the work dir: what an unfinished run prepares from
VERSION_DIR = re.compile(r'\d+\.\d+\.\d+')


def _example(entry: Entry, record: dict) -> dict:
  return {'video': record['frames'], 'fps': np.float32(record['fps']), 'id': entry.key,
          **dict(entry.labels)}


def _beam_examples(entry: Entry, resample: video.Resample, work_dir: str):
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
  # Prepared under names (`config=NAME`, `prepare --name`): many in one data dir.
  NAMED = False

  def __init__(self, *, videos: Optional[str] = None, annotations: Optional[str] = None,
               resample: Optional[video.Resample] = None, workers: int = 1,
               beam: bool = False, progress: bool = True, **kwargs):
    kwargs.setdefault('file_format', 'array_record')
    self._entries: Optional[List[Entry]] = None
    self._class_names: Dict[str, List[str]] = {}
    self._resample = resample or video.Resample(fps=self.DEFAULT_FPS)
    self._workers, self._beam, self._progress = workers, beam, progress
    if annotations is not None or videos is not None:
      entries, self._class_names = self.read_annotations(videos, annotations)
      # Every reader checks what it reads, naming the line; this is the net under
      # them for what TFDS would otherwise take silently (label.labels.txt is a
      # class per line) or refuse only after every video is decoded (a clip twice).
      for name in self.LABEL_FEATURES:
        check_class_names(self._class_names.get(name, []), f'{self.name} {name} classes')
      self._entries = check_entries(entries, f'{annotations or videos}')
      for entry in self._entries:
        check_split(entry.split, entry.where or f'{self.name}: clip {entry.key}')
    self._sources = (self.sources(videos, annotations)
                     if annotations is not None or videos is not None else None)
    super().__init__(**kwargs)

  # --- what each dataset defines -------------------------------------------------
  @classmethod
  def read_annotations(cls, videos: Optional[str], annotations: Optional[str]
                       ) -> Tuple[List[Entry], Dict[str, List[str]]]:
    """Every clip of every split, and the class names of each label feature."""
    raise NotImplementedError

  @classmethod
  def fingerprint(cls, videos: Optional[str], annotations: Optional[str]) -> str:
    """A digest of what the entries are read from: the annotation file's bytes, or
    each file's path and bytes in an annotation directory."""
    del videos  # the annotations list the clips
    return digest_files(annotations)

  @classmethod
  def sources(cls, videos: Optional[str], annotations: Optional[str]) -> dict:
    """What a dataset is prepared from, as its metadata records it."""
    return {'videos': videos and os.path.realpath(videos),
            'annotations': annotations and os.path.realpath(annotations),
            'fingerprint': cls.fingerprint(videos, annotations)}

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
        metadata=tfds.core.MetadataDict(
            fps=self._resample.fps, short_side=self._resample.short_side,
            **({'sources': self._sources} if self._sources is not None else {})),
    )

  @property
  def dataset_name(self) -> str:
    """The name training reads it by: `video_folder`, `video_folder/birds`."""
    config = self.builder_config
    return f'{self.name}/{config.name}' if config else self.name

  @property
  def dataset_dir(self) -> str:
    """DATA_DIR/<name>[/<config>]: its versions, work dir and report."""
    return os.path.join(self._data_dir_root, *self.dataset_name.split('/'))

  @property
  def work_dir(self) -> str:
    return os.path.join(self.dataset_dir, WORK_DIR)

  @property
  def report_path(self) -> str:
    return os.path.join(self.dataset_dir, REPORT)

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
      path = work_file(self.work_dir, entry)
      if os.path.exists(path):
        try:
          record = load_clip(path)
        except DataError as e:
          remove(path)
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
    killers = len(entries) - done - todo  # failed earlier with "worker died"
    if (done or suspects or killers) and self._progress:
      print(f'{self.name}: {done} of {len(entries)} videos were decoded by an earlier '
            f'run' + (f', {killers} killed their worker (skipped)' if killers else '')
            + f'; decoding the other {todo}'
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
      Decoders(1, self._resample, self.work_dir, True, finished).run(suspects)
      Decoders(self._workers, self._resample, self.work_dir, False, finished).run(pending)

  def _take_stock(self, entries: List[Entry]) -> Tuple[List[Entry], List[Entry], int]:
    """What earlier runs left: (entries a killed run was decoding, entries to decode,
    how many are decoded). Removes partial files, work files that are not whole and
    markers of entries with a result; fails an entry that was decoded alone when a
    run was killed (see `_decode_all`)."""
    for directory, _, names in os.walk(self.work_dir):
      for name in names:
        if name.endswith('.partial'):
          remove(os.path.join(directory, name))
    suspects, pending, done, checked = [], [], 0, set()
    for entry in entries:
      path = work_file(self.work_dir, entry)
      if os.path.dirname(path) not in checked:
        checked.add(inside(self.work_dir, os.path.dirname(path)))
      running = work_file(self.work_dir, entry, RUNNING)
      if os.path.exists(path):
        if is_work_file(path):
          done += 1
          remove(running)
          continue
        remove(path)
      failure = read_json(work_file(self.work_dir, entry, FAILED))
      if os.path.exists(running) and failure is None:
        if not (read_json(running) or {}).get('alone'):
          suspects.append(entry)
          continue
        failure = {'reason': death_reason(None)}
        record_failure(self.work_dir, entry, failure['reason'])
      remove(running)
      if failure is None or not str(failure.get('reason')).startswith(WORKER_DIED):
        pending.append(entry)
    return suspects, pending, done

  def check_work_dir(self) -> None:
    """A work dir left by a run with other settings is refused, not mixed in."""
    settings = {'fps': self._resample.fps, 'short_side': self._resample.short_side,
                'jpeg_quality': video.JPEG_QUALITY}
    path = os.path.join(self.work_dir, 'settings.json')
    if os.path.exists(path):
      with open(path) as f:
        earlier = json.load(f)
      if earlier != settings:
        raise DataError(
            f'{self.work_dir} holds an unfinished preparation with {earlier}, not '
            f'{settings}: run prepare again with those settings, or delete it')
    else:
      write_json(self.work_dir, path, settings)

  def failures(self) -> List[dict]:
    """The entries that were skipped: [{'split', 'id', 'path', 'reason'}]."""
    skipped = []
    for entry in self.entries():
      failure = read_json(work_file(self.work_dir, entry, FAILED))
      if failure is not None and not os.path.exists(work_file(self.work_dir, entry)):
        skipped.append(failure)
    return skipped

  def remove_incomplete(self) -> None:
    """Deletes what a killed run's TFDS writer left (`incomplete.*` directories)."""
    parent = self.dataset_dir
    if os.path.isdir(parent):
      for name in os.listdir(parent):
        if name.startswith('incomplete.'):
          shutil.rmtree(os.path.join(parent, name), ignore_errors=True)

  # --- what is there, and from which sources ---------------------------------------
  def contents(self) -> Optional[str]:
    """What this data dir holds of the dataset, in words; None: nothing."""
    if self.is_prepared():
      return (f'{self.dataset_name} (' + ', '.join(
          f'{s} {v.num_examples}' for s, v in self.info.splits.items()) + ' examples)')
    if os.path.isdir(self.work_dir):
      decoded = sum(name.endswith(DECODED) for _, _, names in os.walk(self.work_dir)
                    for name in names)
      return f'an unfinished preparation of {self.dataset_name} ({decoded} videos decoded)'
    return None

  def recorded_sources(self) -> Optional[dict]:
    """The sources of what is there (`contents`); None: not recorded (prepared before
    prepare recorded them) or nothing there."""
    if self.is_prepared():
      return self.info.metadata.get('sources')
    return read_json(os.path.join(self.work_dir, SOURCES))

  def record_sources(self) -> None:
    """Records in the work dir what an unfinished run prepares from."""
    write_json(self.work_dir, os.path.join(self.work_dir, SOURCES), self._sources)

  def remove_prepared(self) -> bool:
    """Deletes the dataset's own files (its versions, the work dir, the report and
    what a killed TFDS writer left) and nothing else: the named datasets beside the
    unnamed one stay. Returns whether there was anything."""
    parent, removed = self.dataset_dir, False
    for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else ():
      path = os.path.join(parent, name)
      if not (VERSION_DIR.fullmatch(name) or name.startswith('incomplete.')
              or name in (WORK_DIR, REPORT)):
        continue
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
      removed = True
    return removed



def prepare_dataset(builder_cls: type, *, data_dir: str, videos: str,
                    annotations: Optional[str], resample: video.Resample, workers: int = 1,
                    beam_options: Optional[str] = None, keep_work: bool = False,
                    name: Optional[str] = None, rebuild: bool = False
                    ) -> Tuple[VideoDatasetBuilder, dict]:
  """Prepares the dataset (stage 1 and 2, see above; with Apache Beam when
  `beam_options` is a string) and writes the report. Returns the builder and the
  report, {} when the dataset was already there. `name`: the dataset's name, for a
  NAMED builder; `rebuild`: first delete what there is of it, whatever its sources."""
  existing = builder_cls(data_dir=data_dir, config=name)
  if not rebuild:
    check_sources(existing, videos, annotations)
  if existing.is_prepared() and not rebuild:
    stored = video.Resample(fps=existing.info.metadata['fps'],
                            short_side=existing.info.metadata['short_side'])
    if stored != resample:
      raise DataError(f'{existing.data_dir} already holds {existing.dataset_name} '
                      f'prepared with fps={stored.fps:g}, short_side={stored.short_side}; '
                      f'use another --data_dir for fps={resample.fps:g}, short_side='
                      f'{resample.short_side}, or --rebuild to replace it')
    if not os.path.isdir(existing.work_dir):
      sizes = ', '.join(f'{s} {v.num_examples}' for s, v in existing.info.splits.items())
      print(f'{existing.dataset_name} is already prepared in {existing.data_dir} ({sizes}); '
            f'nothing to do')
      return existing, {}
  arguments = dict(data_dir=data_dir, config=name, videos=videos, annotations=annotations,
                   resample=resample, workers=workers, beam=beam_options is not None)
  builder = builder_cls(**arguments)  # reads the annotations before anything is deleted
  there = existing.contents()
  if rebuild and existing.remove_prepared():
    print(f'{builder.dataset_name}: deleted {there or "what a run left"} in '
          f'{existing.dataset_dir} (--rebuild)', flush=True)
    builder = builder_cls(**arguments)  # afresh: the first one read the old dataset's info
  entries = builder.entries()
  per_split = Counter(e.split for e in entries)
  not_found = sum(e.path is None for e in entries)
  classes = ', '.join(f'{len(builder.info.features[name].names)} '
                      f'{"" if name == "label" else name + " "}classes'
                      for name in builder.LABEL_FEATURES)
  print(f'{builder.dataset_name}: {len(entries)} clips ('
        + ', '.join(f'{s} {n}' for s, n in per_split.items()) + f'), {classes}; '
        f'{not_found} not found under {videos}; storing {resample.fps:g} fps, '
        f'short side {resample.short_side or "as is"}', flush=True)
  if not builder.is_prepared():  # else a run stopped after writing it: just report
    builder.remove_incomplete()
    builder.record_sources()
    download_config = None
    if beam_options is not None:
      from apache_beam.options.pipeline_options import PipelineOptions
      download_config = tfds.download.DownloadConfig(
          beam_options=PipelineOptions(beam_options.split()))
    builder.download_and_prepare(download_config=download_config)

  report = {'dataset': builder.dataset_name, 'data_dir': builder.data_dir,
            'fps': resample.fps, 'short_side': resample.short_side,
            'clips_in_annotations': dict(per_split),
            'examples': {s: v.num_examples for s, v in builder.info.splits.items()},
            'skipped': builder.failures()}
  with open(builder.report_path, 'w') as f:
    json.dump(report, f, indent=1)
  if not keep_work:
    shutil.rmtree(builder.work_dir, ignore_errors=True)
  return builder, report
