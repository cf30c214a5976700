"""What a dataset module reads its official annotations into: one `Entry` per clip,
and the helpers that find its videos and read its annotation files.

Annotation files are untrusted text: each is read as UTF-8 (a BOM skipped), CSV
header names match whatever their case, and anything a dataset cannot use (another
encoding, a malformed row, a label that is not one line of printable text) is an
AnnotationError naming the file and line, before any video is decoded."""
import csv
import dataclasses
import os
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from vivit import video
from vivit.errors import AnnotationError, VideoError

VIDEO_EXTENSIONS = ('.mp4', '.webm', '.mkv', '.avi', '.mov', '.m4v', '.mpg', '.mpeg')
# Split names become directory and file names.
SPLIT_NAME = re.compile(r'[A-Za-z0-9_-]+')
# Unicode's control characters (C0, DEL, C1), its line and paragraph separators, and
# a byte order mark (one inside a file: files joined together).
CONTROL = re.compile(r'[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]')


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
  # Where the annotations list the clip ('FILE:LINE'), for error messages.
  where: str = ''

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


def annotation_dir(path: str, holding: str) -> str:
  """`path`, if it is a directory (an annotation file given instead is an error)."""
  if not os.path.isdir(path):
    raise AnnotationError(f'--annotations {path}: not a directory (expected the '
                          f'directory holding {holding})')
  return path


def _not_utf8(path: str) -> AnnotationError:
  """The error for a file that does not decode as UTF-8, naming its first bad line."""
  with open(path, 'rb') as f:
    for number, line in enumerate(f, 1):
      try:
        line.decode('utf-8')
      except UnicodeDecodeError as e:
        return AnnotationError(
            f'{path}:{number}: not UTF-8 text (byte 0x{line[e.start]:02x} at column '
            f'{e.start + 1}); annotation files are read as UTF-8: convert it, e.g. '
            f'iconv -f latin1 -t utf-8')
  return AnnotationError(f'{path}: not UTF-8 text')


def _open_text(path: str):
  if not os.path.exists(path):
    raise AnnotationError(f'{path}: file not found')
  try:
    return open(path, newline='', encoding='utf-8-sig')
  except OSError as e:
    raise AnnotationError(f'{path}: cannot read it ({e.strerror})') from None


def read_text(path: str) -> str:
  """The whole of a UTF-8 text file (a BOM skipped)."""
  with _open_text(path) as f:
    try:
      return f.read()
    except UnicodeDecodeError:
      raise _not_utf8(path) from None


def read_csv(path: str, required: Sequence[str], header: bool = True
             ) -> List[Tuple[int, object]]:
  """The non-blank rows of a CSV, each with the line it starts on: (line, dict by
  column) with a header (its names stripped and lowercased; every row has one field
  per column), or (line, list) without. AnnotationError naming the file (and line)
  when it is empty, has no `required` column, or a row that cannot be read."""
  rows = []
  with _open_text(path) as f:
    reader = csv.reader(f)
    while True:
      line = reader.line_num + 1  # where the next row starts (blank lines count)
      try:
        row = next(reader)
      except StopIteration:
        break
      except UnicodeDecodeError:
        raise _not_utf8(path) from None
      except csv.Error as e:
        problem = (f'a field longer than {csv.field_size_limit()} characters (an '
                   f'unclosed quote?)' if 'field limit' in str(e) else f'not CSV ({e})')
        raise AnnotationError(f'{path}:{line}: {problem}') from None
      if row:
        rows.append((line, row))
  if not rows:
    raise AnnotationError(f'{path}: empty file (no rows)')
  if not header:
    return rows
  columns = [c.strip().lower() for c in rows[0][1]]
  missing = [c for c in required if c not in columns]
  if missing:
    raise AnnotationError(f'{path}:{rows[0][0]}: expected a header with columns '
                          f'{",".join(required)}; got {",".join(columns) or "nothing"}')
  twice = sorted({c for c in columns if columns.count(c) > 1})
  if twice:
    raise AnnotationError(f'{path}:{rows[0][0]}: column {twice[0]} appears twice in '
                          f'the header')
  if len(rows) == 1:
    raise AnnotationError(f'{path}: no rows after the header')
  table = []
  for line, row in rows[1:]:
    if len(row) != len(columns):
      raise AnnotationError(f'{path}:{line}: {len(row)} fields where the header has '
                            f'{len(columns)} (a comma in an unquoted field?)')
    table.append((line, dict(zip(columns, (v.strip() for v in row)))))
  return table


def check_text(text: str, what: str, where: str) -> str:
  """`text` (a class name or clip id), if it is one line of printable text without
  space at its ends: TFDS writes class names one per line (`label.labels.txt`) and
  reads them back stripped, skipping empty lines, so anything else would shift or
  merge the classes."""
  if not text.strip():
    raise AnnotationError(f'{where}: empty {what}')
  bad = CONTROL.search(text)
  if bad:
    raise AnnotationError(f'{where}: {what} {text!r:.80} contains the control '
                          f'character U+{ord(bad.group()):04X}; it must be one line of '
                          f'printable text')
  if text != text.strip():
    raise AnnotationError(f'{where}: {what} {text!r:.80} starts or ends with space')
  return text


def check_class_names(names: Sequence[str], where: str) -> List[str]:
  """`names`, if there are some, each a usable class name (`check_text`), none twice."""
  if not names:
    raise AnnotationError(f'{where}: no class names')
  seen = set()
  for i, name in enumerate(names):
    check_text(name, 'class name', f'{where}: class {i}')
    if name in seen:
      raise AnnotationError(f'{where}: class name {name!r:.80} appears twice')
    seen.add(name)
  return list(names)


def check_entries(entries: Sequence[Entry], where: str) -> List[Entry]:
  """`entries`, each clip id checked (`check_text`) and listed once per split: a
  second listing identical to the first is dropped (said on stderr), one that
  differs is an error naming both lines."""
  if not entries:
    raise AnnotationError(f'{where}: the annotations list no clips')
  first: Dict[Tuple[str, str], Entry] = {}
  kept = []
  for entry in entries:
    check_text(entry.key, 'clip id', entry.where or where)
    earlier = first.setdefault((entry.split, entry.key), entry)
    if earlier is entry:
      kept.append(entry)
    elif dataclasses.replace(earlier, where='') != dataclasses.replace(entry, where=''):
      raise AnnotationError(f'{entry.where or where}: clip {entry.key!r:.80} of split '
                            f'{entry.split} is listed again, differently (first at '
                            f'{earlier.where or "an earlier line"})')
  if len(kept) < len(entries):
    print(f'note: {where}: left out {len(entries) - len(kept)} repeated listings of '
          f'clips (identical to the first)', file=sys.stderr)
  return kept
