"""What a dataset module reads its official annotations into: one `Entry` per clip,
and the helpers that find its videos and read its CSV files."""
import dataclasses
import os
import re
from typing import Dict, Optional, Sequence, Tuple

from vivit import video
from vivit.errors import AnnotationError, VideoError

VIDEO_EXTENSIONS = ('.mp4', '.webm', '.mkv', '.avi', '.mov', '.m4v', '.mpg', '.mpeg')
# Split names become directory and file names.
SPLIT_NAME = re.compile(r'[A-Za-z0-9_-]+')


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
  # Cut [start, stop) only from a file longer than that (see video.read_video).
  only_if_longer: bool = False

  def read(self, resample: video.Resample, threads: bool = False) -> video.Clip:
    if self.frame_files is not None:
      return video.read_frame_files(self.frame_files, self.frame_fps, resample)
    if self.path is None:
      raise VideoError('video file not found')
    return video.read_video(self.path, resample, start=self.start, stop=self.stop,
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


def check_split(split: str, where: str) -> str:
  """`split`, if it can name a directory: letters, digits, _ and - only."""
  if not SPLIT_NAME.fullmatch(split):
    raise AnnotationError(f'{where}: split {split!r} is not a name of letters, digits, '
                          f'_ and -')
  return split


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
