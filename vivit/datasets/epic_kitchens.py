"""Epic-Kitchens-100 action segments, cut from the long videos or read from the
released frame folders.

Annotations: the directory holding `EPIC_100_{train,validation}.csv` and
`EPIC_100_{verb,noun}_classes.csv` (`id,key,instances,category`; the class name is
`key`). Every example has a `verb` (97 classes) and a `noun` (300) label.

Videos: `<video_id>.MP4` anywhere under the videos directory (the release's
`<participant>/videos/`), cut at `start_timestamp`/`stop_timestamp`. Where a video
is missing but `<participant>/rgb_frames/<video_id>/frame_%010d.jpg` exists, the
frames `start_frame..stop_frame` are used: the release numbers them at 60 fps for
the original Epic-Kitchens-55 videos and 50 fps for the 2020 extension
(`Pxx_1yy`), not at each video's own rate.
"""
import math
import os

from vivit.errors import AnnotationError
from vivit.datasets.builder import VideoDatasetBuilder
from vivit.datasets.entries import Entry, annotation_dir, check_text, index_files, \
    read_csv

SPLITS = {'train': 'EPIC_100_train.csv', 'validation': 'EPIC_100_validation.csv'}
COLUMNS = ('narration_id', 'video_id', 'start_timestamp', 'stop_timestamp',
           'start_frame', 'stop_frame', 'verb_class', 'noun_class')
CLASS_COLUMNS = ('id', 'key')
# start_frame..stop_frame of a segment read from rgb_frames: at most this many frames
# (4.6 hours at 60 fps), so that a mistyped number cannot list a billion file names.
MAX_SEGMENT_FRAMES = 1_000_000


def seconds(timestamp: str) -> float:
  """'HH:MM:SS.ff' -> seconds (ValueError if it is not that)."""
  hours, minutes, secs = timestamp.split(':')
  value = int(hours) * 3600 + int(minutes) * 60 + float(secs)
  if not math.isfinite(value):
    raise ValueError(f'{timestamp} is not a time')
  return value


def frames_fps(video_id: str) -> float:
  """Rate of the released frame numbering: 50 for the extension videos
  (`P01_101`), 60 for the original Epic-Kitchens-55 ones (`P01_01`)."""
  return 50.0 if len(video_id.split('_')[-1]) == 3 else 60.0


def read_classes(path):
  names, id_lines, key_lines = {}, {}, {}
  for line, row in read_csv(path, CLASS_COLUMNS):
    try:
      number = int(row['id'])
    except ValueError:
      raise AnnotationError(f'{path}:{line}: id {row["id"]!r:.20} is not a number'
                            ) from None
    if number in id_lines:
      raise AnnotationError(f'{path}:{line}: id {number} again (first at line '
                            f'{id_lines[number]})')
    key = check_text(row['key'], 'class key', f'{path}:{line}')
    if key in key_lines:
      raise AnnotationError(f'{path}:{line}: key {key!r:.80} again (first at line '
                            f'{key_lines[key]})')
    names[number], id_lines[number], key_lines[key] = key, line, line
  if sorted(names) != list(range(len(names))):
    raise AnnotationError(f'{path}: class ids are not 0..{len(names) - 1}')
  return [names[i] for i in range(len(names))]


def frame_dirs(videos: str):
  """video_id -> its `rgb_frames/<video_id>` directory."""
  found = {}
  for directory, subdirs, _ in os.walk(videos):
    subdirs.sort()
    if os.path.basename(directory) == 'rgb_frames':
      for video_id in subdirs:
        found.setdefault(video_id, os.path.join(directory, video_id))
  return found


def read_epic(videos, annotations):
  annotation_dir(annotations, 'EPIC_100_{train,validation,verb_classes,noun_classes}.csv')
  verbs = read_classes(os.path.join(annotations, 'EPIC_100_verb_classes.csv'))
  nouns = read_classes(os.path.join(annotations, 'EPIC_100_noun_classes.csv'))
  movies = index_files(videos, ('.mp4',))
  folders = frame_dirs(videos)
  entries = []
  for split, name in SPLITS.items():
    path = os.path.join(annotations, name)
    if not os.path.exists(path):
      continue
    for line, row in read_csv(path, COLUMNS):
      where = f'{path}:{line}'
      try:
        verb, noun = int(row['verb_class']), int(row['noun_class'])
        start, stop = seconds(row['start_timestamp']), seconds(row['stop_timestamp'])
        first, last = int(row['start_frame']), int(row['stop_frame'])
      except ValueError:
        raise AnnotationError(f'{where}: malformed class, timestamp or frame field') from None
      if not (0 <= verb < len(verbs) and 0 <= noun < len(nouns)):
        raise AnnotationError(f'{where}: verb_class {verb} / noun_class {noun} out of '
                              f'range ({len(verbs)} verbs, {len(nouns)} nouns)')
      if last - first >= MAX_SEGMENT_FRAMES:
        raise AnnotationError(f'{where}: start_frame {first} .. stop_frame {last} is over '
                              f'{MAX_SEGMENT_FRAMES} frames')
      labels = (('verb', verbs[verb]), ('noun', nouns[noun]))
      video_id = row['video_id']
      if video_id not in movies and video_id in folders:
        files = tuple(os.path.join(folders[video_id], f'frame_{i:010d}.jpg')
                      for i in range(first, last + 1))
        entries.append(Entry(row['narration_id'], split, labels, folders[video_id],
                             frame_files=files, frame_fps=frames_fps(video_id),
                             where=where))
      else:
        entries.append(Entry(row['narration_id'], split, labels, movies.get(video_id),
                             start=start, stop=stop, where=where))
  if not entries:
    raise AnnotationError(f'{annotations}: neither {" nor ".join(SPLITS.values())}')
  return entries, {'verb': verbs, 'noun': nouns}


class EpicKitchens100(VideoDatasetBuilder):
  """Epic-Kitchens-100 (Damen et al., 2022): 90k egocentric action segments from
  700 kitchen videos, each a verb (97 classes) and a noun (300 classes)."""
  name = 'epic_kitchens_100'
  LABEL_FEATURES = ('verb', 'noun')
  read_annotations = staticmethod(read_epic)
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download the videos (or rgb_frames) with epic-kitchens-download-scripts and the
annotations from github.com/epic-kitchens/epic-kitchens-100-annotations, then
  python -m vivit.prepare epic_kitchens_100 --videos EPIC-KITCHENS \\
      --annotations epic-kitchens-100-annotations --data_dir DATA_DIR
"""
