"""Moments in Time from the official `trainingSet.csv` / `validationSet.csv`.

Annotations: the directory holding `moments_categories.txt` (`label,index` per line)
and the split CSVs (no header; rows `<label>/<file>.mp4,<label>,...`). Videos are
looked up as `VIDEOS/training/<file>` (or `validation/`), then `VIDEOS/<file>`.
"""
import os

from vivit.errors import AnnotationError
from vivit.datasets.builder import VideoDatasetBuilder
from vivit.datasets.entries import VIDEO_EXTENSIONS, Entry, annotation_dir, check_text, \
    read_csv

SPLITS = {'train': ('trainingSet.csv', 'training'),
          'validation': ('validationSet.csv', 'validation')}
CATEGORIES = 'moments_categories.txt'


def read_categories(path):
  names, index_lines, label_lines = {}, {}, {}
  for line, row in read_csv(path, (), header=False):
    try:
      label, index = row[0].strip(), int(row[1])
    except (IndexError, ValueError):
      raise AnnotationError(f'{path}:{line}: expected "label,index", got '
                            f'{",".join(row)!r:.80}') from None
    check_text(label, 'label', f'{path}:{line}')
    if index in index_lines:
      raise AnnotationError(f'{path}:{line}: index {index} again (first at line '
                            f'{index_lines[index]})')
    if label in label_lines:
      raise AnnotationError(f'{path}:{line}: label {label!r:.80} again (first at line '
                            f'{label_lines[label]})')
    names[index], index_lines[index], label_lines[label] = label, line, line
  if sorted(names) != list(range(len(names))):
    raise AnnotationError(f'{path}: class indices are not 0..{len(names) - 1}')
  return [names[i] for i in range(len(names))]


def read_moments(videos, annotations):
  annotation_dir(annotations, f'{CATEGORIES}, trainingSet.csv and validationSet.csv')
  class_names = read_categories(os.path.join(annotations, CATEGORIES))
  classes = set(class_names)
  entries = []
  for split, (csv_name, video_subdir) in SPLITS.items():
    path = os.path.join(annotations, csv_name)
    if not os.path.exists(path):
      continue
    for line, row in read_csv(path, (), header=False):
      where = f'{path}:{line}'
      if len(row) < 2 or not row[0].lower().endswith(VIDEO_EXTENSIONS):
        raise AnnotationError(f'{where}: expected "<label>/<file>.mp4,<label>,...", got '
                              f'{",".join(row)!r:.80}')
      file, label = row[0].strip(), row[1].strip()
      if label not in classes:
        raise AnnotationError(f'{where}: label {label!r:.80} is not in {CATEGORIES}')
      candidates = [os.path.join(videos, video_subdir, file), os.path.join(videos, file)]
      found = next((c for c in candidates if os.path.exists(c)), None)
      entries.append(Entry(file, split, (('label', label),), found, where=where))
  if not entries:
    raise AnnotationError(f'{annotations}: neither trainingSet.csv nor validationSet.csv')
  return entries, {'label': class_names}


class MomentsInTime(VideoDatasetBuilder):
  """Moments in Time (Monfort et al., 2019): 3 s clips of 339 action classes."""
  read_annotations = staticmethod(read_moments)
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Request and download Moments_in_Time_Raw from the MIT-IBM Watson lab, then
  python -m vivit.prepare moments_in_time --videos Moments_in_Time_Raw \\
      --annotations Moments_in_Time_Raw --data_dir DATA_DIR
"""
