"""Where a prepared dataset came from: the sources its metadata records (the videos
directory, the annotations and a digest of what lists the clips), and the check that
a new prepare is from the same ones, not another folder's dataset taken for done."""
import hashlib
import os
import sys
from typing import Optional

from vivit.errors import AnnotationError, DataError
from vivit.datasets.work_files import DECODED


def digest_files(path: str) -> str:
  """`sha256:...` of a file's bytes, or of each regular file's relative path and bytes
  in a directory (in the order of their paths; one that cannot be read is left out:
  the dataset's reader names it if it needs it)."""
  digest = hashlib.sha256()
  files = ([('', path)] if not os.path.isdir(path) else
           sorted((os.path.relpath(os.path.join(d, n), path), os.path.join(d, n))
                  for d, _, names in os.walk(path) for n in names
                  if os.path.isfile(os.path.join(d, n))))
  for name, file in files:
    try:
      f = open(file, 'rb')
    except OSError as e:
      if name:
        continue
      raise AnnotationError(f'{file}: cannot read it ({e.strerror})') from None
    with f:
      digest.update(f'{len(name)}:{name}:{os.fstat(f.fileno()).st_size}:'.encode())
      for block in iter(lambda: f.read(2 ** 20), b''):  # pylint: disable=cell-var-from-loop
        digest.update(block)
  return 'sha256:' + digest.hexdigest()


def digest_text(text: str) -> str:
  return 'sha256:' + hashlib.sha256(text.encode()).hexdigest()


def describe(sources: dict) -> str:
  """`--videos DIR [--annotations PATH] (sha256:0123456789ab)`: sources in a line."""
  return (f'--videos {sources["videos"]}'
          + (f' --annotations {sources["annotations"]}' if sources['annotations'] else '')
          + f' ({sources["fingerprint"][:len("sha256:") + 12]})')


def check_sources(existing, videos: str, annotations: Optional[str]) -> None:
  """What `existing` (a VideoDatasetBuilder without sources of its own) holds, if
  anything, must come from `videos` and `annotations`: a dataset or an unfinished run
  from others is refused, naming what is there and --rebuild (an unfinished run that
  decoded no video is replaced); one whose sources were
  not recorded (prepared before prepare recorded them) is taken, with a warning."""
  there = existing.contents()
  if there is None:
    return
  sources = existing.sources(videos, annotations)
  recorded: Optional[dict] = existing.recorded_sources()
  if recorded is None:
    print(f'warning: {existing.dataset_dir} holds {there} whose sources are not '
          f'recorded (made before prepare recorded them): taken to be from '
          f'{describe(sources)}; --rebuild deletes it and prepares it from them',
          file=sys.stderr, flush=True)
  elif recorded != sources:
    if not existing.is_prepared() and not existing.videos_done(DECODED):
      existing.discard_work_dir()  # a run from other sources that decoded nothing
      return
    another = '--name or --data_dir' if existing.NAMED else '--data_dir'
    raise DataError(f'{existing.dataset_dir} holds {there} from {describe(recorded)}, '
                    f'not from {describe(sources)}: prepare it under another {another}, '
                    f'or add --rebuild to delete it and prepare it from these')
