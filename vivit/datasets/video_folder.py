"""Any labelled set of videos: a CSV `path,label[,split]`, or a directory tree
`VIDEOS/<split>/<class>/<video>`.

CSV paths are relative to the videos directory (or absolute); a header row
`path,label[,split]` is optional; rows without a split are `train`. A split is a name
of letters, digits, _ and - (it names files). Classes are the labels in alphabetical
order.
"""
import os

from vivit.errors import AnnotationError
from vivit.datasets.builder import VideoDatasetBuilder
from vivit.datasets.entries import VIDEO_EXTENSIONS, Entry, check_split, check_text, \
    read_csv
HEADER = ['path', 'label', 'split']


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
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  python -m vivit.prepare video_folder --videos DIR [--annotations LIST.csv] \\
      --data_dir DATA_DIR
"""
