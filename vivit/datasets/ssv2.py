"""Something-Something v2 from the official JSON files and `<id>.webm` videos.

Annotations: the directory holding `something-something-v2-{train,validation}.json`
(lists of {id, label, template, placeholders}) and `something-something-v2-labels.json`
(template -> class index as a string). An entry's class is its template with the
brackets removed. The test JSON has no labels and is not prepared.

Stored at the videos' own 12 fps by default. Never flip these clips horizontally:
labels say left and right.
"""
import json
import os
import sys

from vivit.errors import AnnotationError
from vivit.datasets.builder import VideoDatasetBuilder
from vivit.datasets.entries import VIDEO_EXTENSIONS, Entry, index_files

PREFIX = 'something-something-v2-'


def _load_json(path):
  if not os.path.exists(path):
    raise AnnotationError(f'{path}: file not found')
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise AnnotationError(f'{path}:{e.lineno}: not valid JSON ({e.msg})') from None


def read_ssv2(videos, annotations):
  labels_path = os.path.join(annotations, PREFIX + 'labels.json')
  index = _load_json(labels_path)
  try:
    by_index = {int(i): template for template, i in index.items()}
  except (AttributeError, ValueError):
    raise AnnotationError(f'{labels_path}: expected an object of template -> index')
  if sorted(by_index) != list(range(len(by_index))):
    raise AnnotationError(f'{labels_path}: class indices are not 0..{len(by_index) - 1}')
  class_names = [by_index[i] for i in range(len(by_index))]
  found = index_files(videos, VIDEO_EXTENSIONS)
  entries = []
  for split in ('train', 'validation'):
    path = os.path.join(annotations, f'{PREFIX}{split}.json')
    for number, item in enumerate(_load_json(path), 1):
      where = f'{path}: entry {number}'
      if not isinstance(item, dict) or 'id' not in item or 'template' not in item:
        raise AnnotationError(f'{where}: expected keys id and template, got {item!r:.80}')
      template = item['template'].replace('[', '').replace(']', '')
      if template not in index:
        raise AnnotationError(f'{where} (id {item["id"]}): template {template!r} is not '
                              f'in {labels_path}')
      key = str(item['id'])
      entries.append(Entry(key, split, (('label', template),), found.get(key)))
  if os.path.exists(os.path.join(annotations, PREFIX + 'test.json')):
    print(f'{PREFIX}test.json has no labels; it is not prepared', file=sys.stderr)
  return entries, {'label': class_names}


class Ssv2(VideoDatasetBuilder):
  """Something-Something v2 (Goyal et al., 2017): 174 classes of hand-object
  interactions, 169k training and 25k validation videos."""
  DEFAULT_FPS = 12.0
  read_annotations = staticmethod(read_ssv2)
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the videos (20bn-something-something-v2-??, joined and untarred) and the
labels archive from Qualcomm's Something-Something v2 page, then
  python -m vivit.prepare ssv2 --videos 20bn-something-something-v2 \\
      --annotations LABELS_DIR --data_dir DATA_DIR
"""
