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
2. write: TFDS writes the dataset from those files, then the report, then the work
   files go.
One run at a time prepares a dataset: `prepare_dataset` holds its lock (vivit.locks).
A split without a video to write (none found, or every one failed) ends the run
with the report and one error naming it, before decoding when that is known then.
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

from vivit import locks, video
from vivit.errors import ConfigError, DataError, OutputError, UserError
from vivit.datasets.decoders import WORKER_DIED, Decoders, decode_entry
from vivit.datasets.entries import Entry, check_class_names, check_entries, check_split
from vivit.datasets.provenance import check_sources, digest_files
from vivit.datasets.work_files import DECODED, FAILED, RUNNING, inside, is_work_file, \
    kills, load_clip, read_json, record_failure, remove, work_file, write_json

WORK_DIR = '_prepare'
# Where a finished run moves the work dir to delete it: a run killed while deleting
# leaves this, never a partial work dir that a next run would take for its own.
REMOVED_WORK_DIR = '_prepare.removing'
REPORT = 'prepare_report.json'
LOCK = 'prepare.lock'  # one run at a time prepares a dataset (vivit.locks)
SOURCES = 'sources.json'  # in the work dir: what an unfinished run prepares from
VERSION_DIR = re.compile(r'\d+\.\d+\.\d+')
# A video in flight when this many whole runs were killed is named (it may be what
# kills them; it is never failed for it).
NAMED_AFTER_KILLS = 2


def _found(entry: Entry) -> bool:
  """Whether the entry's video (or frame files) is there to be decoded."""
  return entry.frame_files is not None or (entry.path is not None
                                           and os.path.exists(entry.path))


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

  def write_report(self, examples: Dict[str, int], **extra) -> dict:
    """Writes (atomically) and returns the report: the settings, the clips and
    examples per split, the skipped videos with their reasons, and `extra`."""
    report = {'dataset': self.dataset_name, 'data_dir': self.data_dir,
              'fps': self._resample.fps, 'short_side': self._resample.short_side,
              'clips_in_annotations': dict(Counter(e.split for e in self.entries())),
              'examples': examples, 'skipped': self.failures(), **extra}
    write_json(self.dataset_dir, self.report_path, report, indent=1)
    return report

  def no_examples(self, splits: List[str], why: str) -> DataError:
    """The error of `splits` having no video to write (`why`), after writing the
    report that lists their videos' reasons."""
    self.write_report({}, empty_splits=splits)
    return DataError(f'{self.dataset_name}: split{"s" * (len(splits) > 1)} '
                     f'{", ".join(splits)}: '
                     f'{why}, so there is nothing to write; see the reasons in '
                     f'{self.report_path}')

  def failed_splits(self) -> List[str]:
    """The splits whose every entry failed (a failure file and no work file)."""
    failed = Counter(s['split'] for s in self.failures())
    listed = Counter(e.split for e in self.entries())
    return [split for split, count in listed.items() if failed[split] == count]

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
    missing = [split for split, entries in by_split.items()
               if not any(_found(e) for e in entries)]
    if missing:
      for entry in (e for split in missing for e in by_split[split]):
        record_failure(self.work_dir, entry, 'video file not found')
      raise self.no_examples(missing, 'none of its videos was found')
    if self._beam:
      import apache_beam as beam
      # Reshuffle so that the runner spreads the decoding over its workers.
      return {split: (beam.Create(entries) | beam.Reshuffle()
                      | beam.FlatMap(_beam_examples, self._resample, self.work_dir))
              for split, entries in by_split.items()}
    self._decode_all(self.entries())
    failed = self.failed_splits()
    if failed:
      raise self.no_examples(failed, 'every video failed')
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
    with their videos undisturbed. Only this fails a video for how it ended.

    A run killed as a whole (kill -9, a preempted machine, a power loss, the OOM
    kill of a whole container) fails no video: the videos it was decoding (a marker
    that a worker writes before it decodes an entry, removed once the result is
    written, says which) are decoded again, after the others and one at a time, so
    that a video which itself kills whole runs stops no other video from being
    prepared. The marker counts the whole-run kills while its video was in flight;
    from `NAMED_AFTER_KILLS` on, the video is named in one line as a possible cause
    (leaving it out of the annotations is then the user's call). Ctrl-C leaves no
    marker: the workers ignore it, and this process stops them and removes their
    markers. The dataset's lock (`prepare_dataset`) makes every marker found at the
    start of a run a killed run's, never a live one's.
    """
    suspects, pending, done = self._take_stock(entries)
    todo = len(suspects) + len(pending)
    killers = len(entries) - done - todo  # failed earlier with "worker died"
    if (done or suspects or killers) and self._progress:
      print(f'{self.dataset_name}: {done} of {len(entries)} videos were decoded by an '
            f'earlier run'
            + (f', {killers} killed their worker (skipped)' if killers else '')
            + f'; decoding the other {todo}'
            + (f', last and one at a time the {len(suspects)} it was decoding when it '
               f'was killed' if suspects else ''), file=sys.stderr, flush=True)
    from tqdm import tqdm
    bar = tqdm(total=todo, desc=f'{self.dataset_name}: decoding', unit='video',
               disable=not self._progress or not todo, file=sys.stderr, smoothing=0.05)
    failures = 0

    def finished(ok: bool) -> None:
      nonlocal failures
      failures += not ok
      bar.update()
      bar.set_postfix(skipped=failures, refresh=False)
    with bar:
      Decoders(self._workers, self._resample, self.work_dir, finished).run(pending)
      Decoders(1, self._resample, self.work_dir, finished).run(suspects)

  def _take_stock(self, entries: List[Entry]) -> Tuple[List[Entry], List[Entry], int]:
    """What earlier runs left: (entries a killed run was decoding, entries to decode,
    how many are decoded). Removes partial files, work files that are not whole and
    markers of entries with a result; counts in a marker the kill of the run that
    was decoding its entry, and names the entries in flight at several kills."""
    for directory, _, names in os.walk(self.work_dir):
      for name in names:
        if name.endswith('.partial'):
          remove(os.path.join(directory, name))
    suspects, pending, done, checked, named = [], [], 0, set(), []
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
        marker = read_json(running) or {'pid': None}
        count = kills(marker)
        if 'pid' in marker:
          # A worker's marker: its video was in flight when the run was killed.
          # Rewritten without a pid, it counts that kill once however many runs
          # are killed before its video's turn comes.
          count += 1
          write_json(self.work_dir, running, {'split': entry.split, 'id': entry.key,
                                              'kills': count}, durable=False)
        if count >= NAMED_AFTER_KILLS:
          named.append(f'{entry.key} ({entry.where or entry.path}, {count} kills)')
        suspects.append(entry)
        continue
      remove(running)
      if failure is None or not str(failure.get('reason')).startswith(WORKER_DIED):
        pending.append(entry)
    if named:
      print(f'note: {self.dataset_name}: prepare was killed several times while decoding '
            + ', '.join(named[:3]) + (f' and {len(named) - 3} more' if len(named) > 3
                                      else '')
            + '; if a video kills it (out of memory?), leave it out of the annotations',
            file=sys.stderr, flush=True)
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
      decoded = self.videos_done(DECODED)
      return (f'an unfinished preparation of {self.dataset_name} ({decoded} '
              f'video{"s" * (decoded != 1)} decoded)')
    return None

  def videos_done(self, *suffixes: str) -> int:
    """How many work files with one of `suffixes` (decoded, failed) the work dir holds."""
    return sum(name.endswith(suffixes) for _, _, names in os.walk(self.work_dir)
               for name in names)

  def discard_work_dir(self) -> None:
    shutil.rmtree(self.work_dir)

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



def preparing(dataset_dir: str, dataset_name: str):
  """The lock of the dataset in `dataset_dir` (`vivit.locks`): one run at a time
  prepares a dataset; a second waits for the holder, saying once whom it waits for."""
  path = os.path.join(dataset_dir, LOCK)

  def wait(holder: str) -> None:
    print(f'{dataset_name}: waiting for the run that is preparing it ({holder}; lock '
          f'{path}) to finish', file=sys.stderr, flush=True)

  def cannot_write(error: OSError) -> OutputError:
    return OutputError(f'{path}: cannot create the lock of {dataset_name} '
                       f'({error.strerror})')
  return locks.held(path, wait, cannot_write)


def prepare_dataset(builder_cls: type, *, data_dir: str, name: Optional[str] = None,
                    **kwargs) -> Tuple[VideoDatasetBuilder, dict]:
  """`_prepare_locked`, holding the dataset's lock (`preparing`: the waiting run then
  finds the dataset prepared, or the killed holder's work to resume); first removes
  the work dir that a run killed while deleting it left."""
  dataset_name = f'{builder_cls.name}/{name}' if name else builder_cls.name
  dataset_dir = os.path.join(data_dir, *dataset_name.split('/'))
  with preparing(dataset_dir, dataset_name):
    shutil.rmtree(os.path.join(dataset_dir, REMOVED_WORK_DIR), ignore_errors=True)
    return _prepare_locked(builder_cls, data_dir=data_dir, name=name, **kwargs)


def _prepare_locked(builder_cls: type, *, data_dir: str, videos: str,
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
      print(f'{existing.dataset_name} is already prepared in {existing.data_dir} '
            f'({sizes}); nothing to do')
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
    try:
      builder.download_and_prepare(download_config=download_config)
    except ValueError as e:  # Beam: TFDS checks that a split has examples as it writes it
      failed = builder.failed_splits() if beam_options is not None else []
      if isinstance(e, UserError) or not failed:
        raise
      raise builder.no_examples(failed, 'every video failed') from None

  report = builder.write_report({s: v.num_examples for s, v in builder.info.splits.items()})
  if not keep_work and os.path.isdir(builder.work_dir):
    removed = os.path.join(os.path.dirname(builder.work_dir), REMOVED_WORK_DIR)
    os.replace(builder.work_dir, removed)
    shutil.rmtree(removed, ignore_errors=True)
  return builder, report
