"""The hostile cases of tests/test_hostile_*.py through the real commands as processes
(slow): the default run calls each command's `main(argv)` in process for speed, with
one process per command; here every case's argv runs as `python -m vivit.COMMAND`,
two at a time, and must exit with status 2 and one `error:` line, the line the
in-process test expects."""
import os
import re
import subprocess
import sys
from typing import List, Sequence, Tuple

import pytest

from helpers import run_env
from test_hostile_annotations import KINETICS_CASES, OTHER_CASES, kinetics_case, other_case
from test_hostile_arguments import REFUSED, commands  # noqa: F401  (a fixture)
from test_hostile_checkpoints import HF, MALFORMED, copy_of, made  # noqa: F401  (a fixture)

pytestmark = pytest.mark.slow

MODULES = {'predict': 'vivit.predict', 'prepare': 'vivit.prepare', 'launch': 'vivit.launch',
           'convert': 'vivit.convert', 'demo_video': 'vivit.demo_video'}


def run_processes(runs: Sequence[Tuple[str, List[str]]], parallel: int = 2):
  """(exit status, stderr) of `python -m MODULE ARGV` for each (module, argv), `parallel`
  at a time."""
  results, running = [None] * len(runs), []
  for index, (module, argv) in enumerate(runs):
    running.append((index, subprocess.Popen(
        [sys.executable, '-m', module] + argv, env=run_env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)))
    if len(running) == parallel or index == len(runs) - 1:
      for done, process in running:
        _, err = process.communicate(timeout=300)
        results[done] = process.returncode, err
      running = []
  return results


def assert_one_line(result, pattern, case):
  status, err = result
  lines = err.strip().splitlines()
  assert status == 2 and len(lines) == 1 and lines[0].startswith('error: '), (case, err[-2000:])
  assert re.search(pattern, lines[0]), (case, lines[0])


def test_bad_numbers_as_processes(commands):  # noqa: F811
  runs = [(MODULES[name.split()[0]], commands[name].argv(flags)) for name, flags, _ in REFUSED]
  for (name, flags, message), result in zip(REFUSED, run_processes(runs)):
    assert_one_line(result, '^error: ' + re.escape(message), (name, flags))


def test_hostile_annotation_files_as_processes(tmp_path):
  runs, patterns = [], []
  for case, pattern in KINETICS_CASES.items():
    root = tmp_path / f'kinetics_{case}'
    annotations = kinetics_case(str(root), case)
    runs.append(('vivit.prepare', ['kinetics400', '--videos', str(root / 'videos'),
                                   '--data_dir', str(root / 'tfds'), '--annotations',
                                   annotations]))
    os.makedirs(root / 'videos', exist_ok=True)
    patterns.append((case, pattern))
  for case, pattern in OTHER_CASES.items():
    root = tmp_path / case
    dataset, annotations, videos = other_case(str(root), case)
    videos = videos or str(root / 'videos')
    os.makedirs(videos, exist_ok=True)
    argv = [dataset, '--videos', videos, '--data_dir', str(root / 'tfds')]
    runs.append(('vivit.prepare', argv + (['--annotations', annotations] if annotations
                                          else [])))
    patterns.append((case, pattern))
  for (case, pattern), result in zip(patterns, run_processes(runs)):
    assert_one_line(result, pattern, case)


def test_malformed_checkpoints_as_processes(made, tmp_path):  # noqa: F811
  runs, expected = [], []
  for case in sorted(MALFORMED):
    kind, damage, message = MALFORMED[case]
    checkpoint = copy_of(made, tmp_path / case, kind)
    damage(checkpoint)
    runs.append(('vivit.predict', [f'--checkpoint={checkpoint}', f'--video={made[1]}']))
    expected.append((case, re.escape(message)))
    if kind == HF:
      runs.append(('vivit.convert', ['--from=transformers', f'--src={checkpoint}',
                                     f'--dst={tmp_path / case / "out"}']))
      expected.append((case, re.escape(message)))
  for (case, pattern), result in zip(expected, run_processes(runs)):
    assert_one_line(result, pattern, case)
