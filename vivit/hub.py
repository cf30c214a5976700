"""Hugging Face Hub ids wherever a checkpoint path is accepted, fetched into the Hub
cache by `huggingface_hub.snapshot_download` (which honours HF_HOME, HF_HUB_CACHE,
HF_HUB_OFFLINE and HF_TOKEN itself):
  hf://org/name[@revision]   always the Hub (a revision: a branch, tag or commit)
  org/name[@revision]        the Hub only where it cannot be a local path the user
                             meant: it does not exist, and `org` is no local directory
                             (`runs/demo` with a `runs/` beside it stays a path, and a
                             missing one is said so)
Anything else (`./x`, `../x`, `~/x`, absolute paths, URLs such as gs://) is a path.

  vivit-convert --from transformers --src google/vivit-b-16x2-kinetics400 --dst k400_b
"""
import os
import re
from typing import Optional, Tuple

from vivit.errors import ConfigError, MissingError

SCHEME = 'hf://'
# Both parts start with a letter or digit, so `./x`, `../x` and `~/x` stay paths;
# a URL (gs://...) has a ':' and never matches. A revision's parts are names, never
# `.` or `..` (huggingface_hub reads refs/<revision> in its cache).
_HUB_ID = re.compile(r'(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)'
                     r'(?:@(?P<revision>[\w.-]+(?:/[\w.-]+)*))?')
# Other frameworks' copies of transformers weights, which no reader here opens.
_OTHER_WEIGHTS = ['tf_model.h5', 'flax_model.msgpack', '*.onnx', 'rust_model.ot']


def _parse(name: str):
  """The match of `name` as `org/name[@revision]`, or None."""
  match = _HUB_ID.fullmatch(name)
  if match and match['revision'] and {'.', '..'} & set(match['revision'].split('/')):
    return None
  return match


def hub_id(path_or_id: str) -> Optional[Tuple[str, Optional[str]]]:
  """(repo id, revision or None) if `path_or_id` names a Hub model (see above),
  else None (a local path or URL). ConfigError for an `hf://` that names none."""
  text = str(path_or_id)
  if text.startswith(SCHEME):
    match = _parse(text[len(SCHEME):])
    if not match:
      raise ConfigError(f'{text}: a Hugging Face Hub id is hf://org/name or '
                        f'hf://org/name@revision')
    return match['repo'], match['revision']
  match = _parse(text)
  if not match or os.path.exists(text) or _first_part_is_local(text):
    return None
  return match['repo'], match['revision']


def _first_part_is_local(text: str) -> bool:
  """Whether the `org` of `org/name` is a local directory: then `org/name` is a path
  the user meant (a mistyped run under runs/), never a Hub download."""
  return os.path.isdir(text.split('/', 1)[0])


def resolve(path_or_id: str) -> str:
  """The local directory of `path_or_id`: a Hub id's cached snapshot (downloaded if
  need be), anything else unchanged (local paths, URLs). MissingError, one line, when
  the Hub has no such model or revision, or cannot be reached and the cache has no
  copy, or for a missing local path that would otherwise read as an id; ConfigError
  for an id huggingface_hub refuses."""
  parsed = hub_id(path_or_id)
  if parsed is not None:
    return _download(path_or_id, *parsed)
  text = str(path_or_id)
  if _parse(text) and not os.path.exists(text):  # `org` exists: a mistyped local path
    raise MissingError(f'{text} does not exist (a local path, as {text.split("/")[0]}/ '
                       f'is a local directory; {SCHEME}{text} reads the Hugging Face Hub '
                       f'model of that name)')
  return path_or_id


def _download(name: str, repo: str, revision: Optional[str]) -> str:
  """The snapshot directory `snapshot_download` returns, its errors as MissingError."""
  try:
    import huggingface_hub
    from huggingface_hub.utils import (HFValidationError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError,
                                       validate_repo_id)
  except ImportError:
    raise MissingError(f'{name} is not a local path; to read it as a Hugging Face Hub '
                       f'id, pip install "vivit-jax[hf]"') from None
  try:
    validate_repo_id(repo)  # before any request: the id alone is wrong
    return huggingface_hub.snapshot_download(repo, revision=revision,
                                             ignore_patterns=_OTHER_WEIGHTS)
  except HFValidationError as e:
    raise ConfigError(f'{name} is neither a local path nor a valid Hugging Face Hub id '
                      f'({" ".join(str(e).split())})') from None
  except RevisionNotFoundError:
    raise MissingError(f'{name}: the Hugging Face Hub model {repo} has no revision '
                       f'{revision}') from None
  except RepositoryNotFoundError:  # also a gated or private model without access
    raise MissingError(f'{name} is neither a local path nor a Hugging Face Hub model '
                       f'this account can read (a private or gated one needs HF_TOKEN)'
                       ) from None
  except LocalEntryNotFoundError:
    raise MissingError(_offline_message(name, huggingface_hub.constants)) from None


def _offline_message(name: str, constants) -> str:
  """Why an id could not be read without the Hub, and what to do."""
  reason = ('HF_HUB_OFFLINE is set' if constants.HF_HUB_OFFLINE
            else 'the Hugging Face Hub cannot be reached')
  return (f'{name} is not a local path, {reason} and the Hub cache '
          f'({constants.HF_HUB_CACHE}) has no complete copy of it: run once online to '
          f'cache it, or download it elsewhere and pass its directory')
