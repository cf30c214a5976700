"""Kinetics-400/600/700 from the official per-split CSVs and downloaded clips.

Annotations: the directory holding the release's CSVs (`train.csv`, `validate.csv`
or `val.csv`, `test.csv`, or `kinetics_400_train.csv`-style names): the split is read
from the file name. Columns `label,youtube_id,time_start,time_end` (plus `split`,
`is_cc`, in any order); a CSV without `label` (the unlabelled test sets) is not
prepared. Classes are the training labels in alphabetical order.

Videos: `<youtube_id>_<start:06d>_<end:06d>.<ext>` (the official downloader's names)
or `<youtube_id>.<ext>` (cut at time_start..time_end when it holds the whole YouTube
video), anywhere under the videos directory (flat, per split or per class).
"""
import os
import re
import sys
from typing import Dict, List, Optional, Tuple

from vivit.errors import AnnotationError
from vivit.datasets.builder import VideoDatasetBuilder
from vivit.datasets.entries import VIDEO_EXTENSIONS, Entry, annotation_dir, check_text, \
    index_files, read_csv

SPLIT_WORDS = {'train': 'train', 'training': 'train', 'val': 'validation',
               'validate': 'validation', 'validation': 'validation', 'test': 'test'}
COLUMNS = ('youtube_id', 'time_start', 'time_end')

INSTRUCTIONS = """\
Download the videos and the annotation CSVs of the release (e.g. with the CVDF
mirror's scripts, github.com/cvdfoundation/kinetics-dataset), then
  python -m vivit.prepare {name} --videos VIDEO_DIR --annotations CSV_DIR \\
      --data_dir DATA_DIR
"""


def split_of(file_name: str) -> Optional[str]:
  """'train' / 'validation' / 'test' from words in a CSV's name, else None."""
  words = re.split(r'[^a-z]+', os.path.splitext(file_name)[0].lower())
  if 'holdout' in words:
    return None
  splits = {SPLIT_WORDS[w] for w in words if w in SPLIT_WORDS}
  return splits.pop() if len(splits) == 1 else None


def read_kinetics(videos: str, annotations: str
                  ) -> Tuple[List[Entry], Dict[str, List[str]]]:
  csvs: Dict[str, str] = {}
  annotation_dir(annotations, 'the split CSVs')
  for name in sorted(os.listdir(annotations)):
    split = split_of(name) if name.endswith('.csv') else None
    if split is None:
      continue
    if split in csvs:
      raise AnnotationError(f'two annotation files for split {split}: {csvs[split]} '
                            f'and {os.path.join(annotations, name)}')
    csvs[split] = os.path.join(annotations, name)
  if not csvs:
    raise AnnotationError(f'{annotations}: no train/validate/test CSV found')
  rows = {}
  for split, path in csvs.items():
    table = read_csv(path, COLUMNS)
    if 'label' not in table[0][1]:
      print(f'{path}: no label column (an unlabelled test set); split {split} is not '
            f'prepared', file=sys.stderr)
      continue
    for line, row in table:
      check_text(row['label'], 'label', f'{path}:{line}')
    rows[split] = (path, table)
  if not rows:
    raise AnnotationError(f'{annotations}: no CSV has a label column')
  labelled = rows.get('train', next(iter(rows.values())))
  class_names = sorted({row['label'] for _, row in labelled[1]})
  classes = set(class_names)
  found = index_files(videos, VIDEO_EXTENSIONS)
  entries = []
  for split, (path, table) in rows.items():
    for line, row in table:
      where = f'{path}:{line}'
      if row['label'] not in classes:
        raise AnnotationError(f'{where}: label {row["label"]!r} is not a class of the '
                              f'training CSV {labelled[0]}')
      try:
        start, end = int(float(row['time_start'])), int(float(row['time_end']))
      except (ValueError, OverflowError):  # not a number, nan, inf
        raise AnnotationError(f'{where}: time_start/time_end are not finite numbers: '
                              f'{row["time_start"]!r}, {row["time_end"]!r}') from None
      name = f'{row["youtube_id"]}_{start:06d}_{end:06d}'
      labels = (('label', row['label']),)
      if name in found or row['youtube_id'] not in found:
        entries.append(Entry(name, split, labels, found.get(name), where=where))
      else:  # `<youtube_id>.mp4`: the whole YouTube video, or only the clip
        entries.append(Entry(name, split, labels, found[row['youtube_id']], start=start,
                             stop=end, only_if_longer=True, where=where))
  return entries, {'label': class_names}


class _Kinetics(VideoDatasetBuilder, skip_registration=True):
  NUM_CLASSES = 0

  read_annotations = staticmethod(read_kinetics)

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    # Said once the annotations passed every check: an error stays the only line.
    found = len(self._class_names.get('label', ()))
    if self._entries is not None and found != self.NUM_CLASSES:
      print(f'note: {found} classes in the training CSV (the full {self.name} has '
            f'{self.NUM_CLASSES})', file=sys.stderr)


class Kinetics400(_Kinetics):
  """Kinetics-400 (Kay et al., 2017): 400 human action classes, 10 s YouTube clips."""
  NUM_CLASSES = 400
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS.format(name='kinetics400')


class Kinetics600(_Kinetics):
  """Kinetics-600 (Carreira et al., 2018): 600 human action classes."""
  NUM_CLASSES = 600
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS.format(name='kinetics600')


class Kinetics700(_Kinetics):
  """Kinetics-700 (Carreira et al., 2019; 2020 re-release): 700 action classes."""
  NUM_CLASSES = 700
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS.format(name='kinetics700')
