"""Any labelled set of videos: a CSV `path,label[,split]`, or a directory tree
`VIDEOS/<split>/<class>/<video>`.

CSV paths are relative to the videos directory (or absolute); a header row
`path,label[,split]` is optional; rows without a split are `train`. A split is a name
of letters, digits, _ and - (it names files). Classes are the labels in alphabetical
order.

One data dir holds any number of these, each under a name: `vivit-prepare
video_folder --name birds` makes `video_folder/birds` (a TFDS builder config made
for the name, stored in `DATA_DIR/video_folder/birds/`). Without a name it is plain
`video_folder` (`DATA_DIR/video_folder/`), as before names existed.
"""
import json
import os
import re

import tensorflow_datasets as tfds

from vivit.errors import AnnotationError, ConfigError
from vivit.datasets.builder import VideoDatasetBuilder
from vivit.datasets.provenance import digest_text
from vivit.datasets.entries import VIDEO_EXTENSIONS, Entry, check_split, check_text, \
    read_csv
HEADER = ['path', 'label', 'split']
# A dataset's name is a directory name, and never that of what the unnamed dataset
# keeps beside the named ones (`_prepare`, `1.0.0`, `prepare_report.json`).
NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_-]{0,99}')


def check_name(name: str) -> str:
  """`name`, if it can name a video_folder dataset."""
  if not NAME.fullmatch(name):
    raise ConfigError(f'{name!r} is not a dataset name: 1 to 100 letters, digits, _ '
                      f'and -, starting with a letter or digit')
  return name


def read_listing(csv_path):
  rows = []
  for number, (line, row) in enumerate(read_csv(csv_path, (), header=False)):
    row = [v.strip() for v in row]
    if number == 0 and [v.lower() for v in row] == HEADER[:len(row)]:
      continue
    if len(row) not in (2, 3) or not all(row):
      raise AnnotationError(f'{csv_path}:{line}: expected "path,label[,split]", got '
                            f'{",".join(row)!r:.80}')
    where = f'{csv_path}:{line}'
    split = check_split(row[2], where) if len(row) == 3 else 'train'
    rows.append((row[0], check_text(row[1], 'label', where), split, where))
  if not rows:
    raise AnnotationError(f'{csv_path}: no videos listed')
  return rows


def read_tree(videos):
  rows = []
  splits = [d for d in sorted(os.listdir(videos)) if os.path.isdir(os.path.join(videos, d))]
  for split in splits:
    before = len(rows)
    for label in sorted(os.listdir(os.path.join(videos, split))):
      class_dir = os.path.join(videos, split, label)
      if not os.path.isdir(class_dir):
        continue
      for name in sorted(os.listdir(class_dir)):
        if name.lower().endswith(VIDEO_EXTENSIONS):
          where = os.path.join(videos, split)  # not class_dir: it may hold a newline
          check_text(label, 'class directory name', where)
          rows.append((os.path.join(split, label, name), label, split, where))
    if len(rows) > before:
      check_split(split, os.path.join(videos, split))
  if not rows:
    raise AnnotationError(f'{videos}: no <split>/<class>/<video> files found')
  return rows


def read_folder(videos, annotations):
  rows = read_listing(annotations) if annotations else read_tree(videos)
  entries = [Entry(path, split, (('label', label),),
                   path if os.path.isabs(path) else os.path.join(videos, path), where=where)
             for path, label, split, where in rows]
  return entries, {'label': sorted({label for _, label, _, _ in rows})}


class VideoFolder(VideoDatasetBuilder):
  """A user's own labelled videos (`python -m vivit.prepare video_folder`)."""
  read_annotations = staticmethod(read_folder)
  NAMED = True
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  python -m vivit.prepare video_folder --name NAME --videos DIR \\
      [--annotations LIST.csv] --data_dir DATA_DIR
"""

  @classmethod
  def get_builder_config(cls, name, version=None):
    """Any valid name is a config: `video_folder/NAME` is a dataset of its own."""
    del version  # every name has the class's version
    return tfds.core.BuilderConfig(name=check_name(name))

  @classmethod
  def fingerprint(cls, videos, annotations):
    """A tree's listing (its clips' paths, labels and splits) stands for annotations."""
    if annotations:
      return super().fingerprint(videos, annotations)
    return digest_text(json.dumps([row[:3] for row in read_tree(videos)]))
