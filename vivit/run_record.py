"""WORKDIR/run.json: a record per start of training (a JSON list, one appended per
start, rewritten atomically): the library versions, the git commit of a clone,
the devices, the command line, the time and the step it started from."""
import datetime
import importlib.metadata
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional

import jax
from etils import epath

from vivit.errors import CheckpointError
from vivit.workdir import read_record, write_atomically

# The distributions whose versions decide a run's numbers (and this package).
DISTRIBUTIONS = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow',
                 'tensorflow-datasets', 'numpy', 'vivit-jax')
# Some installs ship TensorFlow under another name.
ALTERNATIVES = {'tensorflow': ('tensorflow-cpu', 'tf-nightly')}
GIT_TIMEOUT_S = 5


def versions() -> Dict[str, Optional[str]]:
  """{distribution: its installed version, None where not installed}."""
  found = {}
  for name in DISTRIBUTIONS:
    found[name] = None
    for candidate in (name,) + ALTERNATIVES.get(name, ()):
      try:
        found[name] = importlib.metadata.version(candidate)
        break
      except importlib.metadata.PackageNotFoundError:
        pass
  return found


def git_state(directory: str) -> Optional[Dict[str, Any]]:
  """{'commit', 'dirty'} of the git clone that `directory` is the top of (dirty:
  tracked files changed), None when it is not one or git does not answer fast."""
  if not os.path.exists(os.path.join(directory, '.git')):
    return None
  try:
    run = lambda *args: subprocess.run(['git', '-C', directory, *args], capture_output=True,
                                       text=True, timeout=GIT_TIMEOUT_S, check=True).stdout
    commit = run('rev-parse', 'HEAD').strip()
    dirty = bool(run('status', '--porcelain', '--untracked-files=no').strip())
  except (OSError, subprocess.SubprocessError):
    return None
  return {'commit': commit, 'dirty': dirty}


def run_record(start_step: int) -> Dict[str, Any]:
  """This process's record of a training that starts at `start_step`."""
  devices = jax.devices()
  record = {
      'start_time': datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec='seconds'),
      'start_step': start_step,
      'command': list(sys.argv),
      'versions': versions(),
      'devices': {'platform': jax.default_backend(), 'kind': devices[0].device_kind,
                  'count': len(devices)},
      'process_count': jax.process_count(),
  }
  package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  git = git_state(package_root)
  if git is not None:
    record['git'] = git
  return record


def append_run_record(workdir: epath.Path, record: Dict[str, Any]) -> List[Dict[str, Any]]:
  """WORKDIR/run.json with `record` appended; the records. CheckpointError naming
  the file when it holds something else than a list."""
  path = workdir / 'run.json'
  records = read_record(path, 'a list of run records') if path.exists() else []
  if not isinstance(records, list):
    raise CheckpointError(f'{path} is not a list of run records; move it away to start')
  records.append(record)
  write_atomically(path, json.dumps(records, indent=2) + '\n')
  return records
