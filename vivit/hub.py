"""Hugging Face Hub ids wherever a checkpoint path is accepted: `org/name` or
`org/name@revision` (a branch, tag or commit) that is not a local path is fetched
into the Hub cache by `huggingface_hub.snapshot_download`, which honours HF_HOME,
HF_HUB_CACHE, HF_HUB_OFFLINE and HF_TOKEN itself.

  vivit-convert --from transformers --src google/vivit-b-16x2-kinetics400 --dst k400_b
"""
import os
import re
from typing import Optional, Tuple

from vivit.errors import MissingError

# Both parts start with a letter or digit, so `./x`, `../x` and `~/x` stay paths;
# a URL (gs://...) has a ':' and never matches.
_HUB_ID = re.compile(r'(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)'
                     r'(?:@(?P<revision>[\w.][\w./-]*))?')
# Other frameworks' copies of transformers weights, which no reader here opens.
_OTHER_WEIGHTS = ['tf_model.h5', 'flax_model.msgpack', '*.onnx', 'rust_model.ot']


def hub_id(path_or_id: str) -> Optional[Tuple[str, Optional[str]]]:
  """(repo id, revision or None) if `path_or_id` names a Hub model rather than an
  existing local path, else None."""
  match = _HUB_ID.fullmatch(str(path_or_id))
  if not match or os.path.exists(path_or_id):
    return None
  return match['repo'], match['revision']


def resolve(path_or_id: str) -> str:
  """The local directory of `path_or_id`: a Hub id's cached snapshot (downloaded if
  need be), anything else unchanged (local paths, URLs). MissingError, one line, when
  the Hub has no such model or revision, or cannot be reached and the cache has no
  copy."""
  parsed = hub_id(path_or_id)
  if parsed is None:
    return path_or_id
  return _download(path_or_id, *parsed)


def _download(name: str, repo: str, revision: Optional[str]) -> str:
  """The snapshot directory `snapshot_download` returns, its errors as MissingError."""
  try:
    import huggingface_hub
    from huggingface_hub.utils import (LocalEntryNotFoundError, RepositoryNotFoundError,
                                       RevisionNotFoundError)
  except ImportError:
    raise MissingError(f'{name} is not a local path; to read it as a Hugging Face Hub '
                       f'id, pip install "vivit-jax[hf]"') from None
  try:
    return huggingface_hub.snapshot_download(repo, revision=revision,
                                             ignore_patterns=_OTHER_WEIGHTS)
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
