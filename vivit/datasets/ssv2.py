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
from vivit.datasets.entries import VIDEO_EXTENSIONS, Entry, annotation_dir, \
    check_class_names, index_files, read_text

PREFIX = 'something-something-v2-'


def _load_json(path, kind):
  """The JSON value in `path`, if it is of type `kind` (list or dict)."""
  text = read_text(path)
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise AnnotationError(f'{path}:{e.lineno}: not valid JSON ({e.msg})') from None
  except RecursionError:
    raise AnnotationError(f'{path}: not valid JSON (nested too deeply)') from None
  if not isinstance(value, kind):
    expected = 'list' if kind is list else 'object'
    raise AnnotationError(f'{path}: expected a JSON {expected}, got {type(value).__name__}')
  return value


def read_class_names(labels_path):
  """The templates of `-labels.json` (template -> index as a string) by index."""
  index = _load_json(labels_path, dict)
  by_index = {}
  for template, i in index.items():
    try:
      number = int(i)
    except (TypeError, ValueError):
      raise AnnotationError(f'{labels_path}: template {template!r:.80} has index '
                            f'{i!r:.20}, not a whole number') from None
    if number in by_index:
      raise AnnotationError(f'{labels_path}: templates {by_index[number]!r:.80} and '
                            f'{template!r:.80} both have index {number}')
    by_index[number] = template
  if sorted(by_index) != list(range(len(by_index))):
    raise AnnotationError(f'{labels_path}: class indices are not 0..{len(by_index) - 1}')
  return check_class_names([by_index[i] for i in range(len(by_index))], labels_path)


def read_ssv2(videos, annotations):
  annotation_dir(annotations, f'{PREFIX}{{train,validation,labels}}.json')
  labels_path = os.path.join(annotations, PREFIX + 'labels.json')
  class_names = read_class_names(labels_path)
  classes = set(class_names)
  found = index_files(videos, VIDEO_EXTENSIONS)
  entries = []
  for split in ('train', 'validation'):
    path = os.path.join(annotations, f'{PREFIX}{split}.json')
    for number, item in enumerate(_load_json(path, list), 1):
      where = f'{path}: entry {number}'
      if (not isinstance(item, dict) or not isinstance(item.get('id'), (str, int))
          or not isinstance(item.get('template'), str)):
        raise AnnotationError(f'{where}: expected keys id (a string) and template (a '
                              f'string), got {item!r:.80}')
      template = item['template'].replace('[', '').replace(']', '')
      if template not in classes:
        raise AnnotationError(f'{where} (id {item["id"]!r:.40}): template '
                              f'{template!r:.80} is not in {labels_path}')
      key = str(item['id'])
      entries.append(Entry(key, split, (('label', template),), found.get(key),
                           where=where))
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
