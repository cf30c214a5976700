"""Several JAX processes on one machine (`vivit.launch`): 2 processes x 4 devices
train, evaluate and checkpoint like 1 process x 8 devices (FSDP 4x2 both), and
checkpoints resume on another topology (8 devices with FSDP 4x2 -> 2 processes
data-parallel; 2 processes -> 1 device) to the same result as an uninterrupted run:
together, 1 device, 8 devices and 2 hosts train the same model."""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from helpers import (REGULARISED, assert_quiet, cli_args, final_params, read_metrics, run_env,
                     tiny_run_config)
from vivit import evaluate

# Dropout, stochastic depth, mixup and per-group clipping on: their randomness and
# grouping must not depend on the topology either.
STEPS = {**REGULARISED, 'training.num_steps': 4, 'training.checkpoint_every': 2,
         'training.eval_every': 4, 'eval.batch_size': 16}  # 24 videos: a padded batch


def train(data_dir, workdir, processes=1, devices=8, **overrides):
  args = cli_args(data_dir, workdir, **{**STEPS, **overrides})
  if processes == 1:
    command, env = args, run_env(devices)
  else:
    command = [sys.executable, '-m', 'vivit.launch', f'--processes={processes}',
               f'--devices_per_process={devices}', '--'] + args[3:]
    env = run_env(1)
  result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
  if processes == 1:
    assert_quiet(result.stdout + result.stderr)
  return result.stdout


def rewind(source, target, step):
  """A copy of workdir `source` as it was at checkpoint `step`."""
  shutil.copytree(source, target)
  for name in os.listdir(target / 'checkpoints'):
    if name.isdigit() and int(name) > step:
      shutil.rmtree(target / 'checkpoints' / name)
  shutil.rmtree(target / 'best', ignore_errors=True)


def assert_same_params(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-6, rtol=0)


@pytest.fixture(scope='module')
def one_process(data_dir, tmp_path_factory):  # noqa: F811
  workdir = tmp_path_factory.mktemp('one') / 'run'
  train(data_dir, workdir, processes=1, devices=8, **{'mesh.fsdp': 2})
  return workdir


@pytest.fixture(scope='module')
def two_processes(data_dir, tmp_path_factory):  # noqa: F811
  workdir = tmp_path_factory.mktemp('two') / 'run'
  out = train(data_dir, workdir, processes=2, devices=4,
              **{'mesh.fsdp': 2, 'training.profile_steps': 2})
  return workdir, out


def test_two_processes_train_and_evaluate_like_one(one_process, two_processes):
  workdir, out = two_processes
  assert '[0] step 4/4' in out and '[1] step 4/4' not in out  # process 0 reports
  # training.profile_steps: process 0 traces (the numbers below are the same).
  assert '[0] profiling steps 2-3' in out and '[1] profiling' not in out
  assert len(glob.glob(str(workdir / 'tensorboard/plugins/profile/*/*.xplane.pb'))) == 1
  np.testing.assert_allclose([r['loss'] for r in read_metrics(workdir)],
                             [r['loss'] for r in read_metrics(one_process)], atol=1e-5)
  two, one = read_metrics(workdir, 'validation')[-1], read_metrics(one_process, 'validation')[-1]
  assert two['num_videos'] == one['num_videos'] == 24  # padding rows left out
  np.testing.assert_allclose([two['top1'], two['top5']], [one['top1'], one['top5']])
  assert_same_params(final_params(workdir, 4), final_params(one_process, 4))


def test_two_processes_evaluate_a_checkpoint_like_one(data_dir, one_process, two_processes):  # noqa: F811
  """`vivit.evaluate` on 2 hosts: the best params restored onto the mesh, 2 x 1 views
  per video, hosts with nothing but padding in the last batch."""
  workdir, _ = two_processes
  args = cli_args(data_dir, workdir, **STEPS)[3:]
  result = subprocess.run(
      [sys.executable, '-m', 'vivit.launch', '--processes=2', '--devices_per_process=4',
       '--module=vivit.evaluate', '--'] + args, env=run_env(1), capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
  with open(workdir / 'eval_results.json') as f:
    two = json.load(f)
  one = evaluate.run(tiny_run_config(data_dir, **STEPS, **{'mesh.fsdp': 1}), str(one_process))
  assert two['num_videos'] == one['num_videos'] == 20
  assert two['confusion_matrix'] == one['confusion_matrix']
  np.testing.assert_allclose(two['top5'], one['top5'])


def test_resume_from_two_processes_on_one_device(data_dir, one_process, two_processes,  # noqa: F811
                                                tmp_path):
  # Saved by 2 processes x 4 (FSDP), resumed on 1 device.
  back = tmp_path / 'to_one'
  rewind(two_processes[0], back, 2)
  out = train(data_dir, back, processes=1, devices=1, **{'mesh.fsdp': 1})
  assert f'resumed from {back}/checkpoints/2' in out
  assert_same_params(final_params(back, 4), final_params(one_process, 4))


@pytest.mark.slow  # the other direction of the test above: 40-110 s more on 2 cores
def test_resume_from_eight_devices_on_two_processes(data_dir, one_process, two_processes,  # noqa: F811
                                                    tmp_path):
  # Saved on 8 devices (FSDP 4x2), resumed on 2 processes x 4, data-parallel.
  rewound = tmp_path / 'to_two'
  rewind(one_process, rewound, 2)
  out = train(data_dir, rewound, processes=2, devices=4, **{'mesh.fsdp': 1})
  assert f'resumed from {rewound}/checkpoints/2' in out
  assert_same_params(final_params(rewound, 4), final_params(one_process, 4))


@pytest.mark.parametrize('target,signum', [
    # The default run: the launcher forwards signals (stand-ins below), a first SIGINT
    # stops training as SIGTERM does (test_faults.py), and one process stops at an
    # agreed step; these whole 2-process runs are in the slow set.
    pytest.param('launcher', signal.SIGTERM, marks=pytest.mark.slow),  # ~30 s
    pytest.param('launcher', signal.SIGINT, marks=pytest.mark.slow),
    pytest.param('host 1', signal.SIGTERM, marks=pytest.mark.slow)],
    ids=['launcher-SIGTERM', 'launcher-SIGINT', 'host1-SIGTERM'])
def test_stop_signal_stops_every_host_at_the_same_step(data_dir, tmp_path, target, signum):  # noqa: F811
  """Preemption (SIGTERM) or Ctrl-C (SIGINT) reaches the launcher, which passes it on,
  or one host only: all of them save the same step and exit cleanly."""
  import psutil
  workdir = tmp_path / 'term'
  args = cli_args(data_dir, workdir, **{'training.num_steps': 100000,
                                        'training.checkpoint_every': 100000,
                                        'training.eval_every': 100000})[3:]
  launcher = subprocess.Popen(
      [sys.executable, '-m', 'vivit.launch', '--processes=2', '--devices_per_process=1',
       '--'] + args, env=run_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
      text=True)
  metrics = workdir / 'metrics.jsonl'
  deadline = time.time() + 240
  while time.time() < deadline and not (metrics.exists() and
                                        len(metrics.read_text().splitlines()) >= 3):
    time.sleep(0.1)
  hosts = psutil.Process(launcher.pid).children()
  assert len(hosts) == 2
  if target == 'launcher':
    launcher.send_signal(signum)
  else:
    next(h for h in hosts if '1' == h.environ().get('VIVIT_PROCESS_ID')).send_signal(signum)
  out, _ = launcher.communicate(timeout=120)
  assert launcher.returncode == 0, out[-3000:]
  name = signal.Signals(signum).name
  steps = re.findall(rf'\[(\d)\] {name}: saved checkpoint at step (\d+)', out)
  assert sorted(host for host, _ in steps) == ['0', '1'], out[-3000:]
  assert len({step for _, step in steps}) == 1, steps
  assert sorted(os.listdir(workdir / 'checkpoints')) == [steps[0][1]]


STAND_IN = """import signal, sys, time
def stop(signum, _):
  print('got', signal.Signals(signum).name, flush=True)
  sys.exit(0)
for signum in (signal.SIGTERM, signal.SIGINT):
  signal.signal(signum, stop if sys.argv[2] == 'obey' else signal.SIG_IGN)
print('ready', flush=True)
while True:
  time.sleep(0.05)
"""


def test_launcher_forwards_signals_and_kills_after_the_timeout(tmp_path):
  """Stand-in processes: a signal to the launcher reaches each (once: they are not in
  the terminal's process group); those that ignore it are killed after
  --stop_timeout, and the launcher reports it."""
  (tmp_path / 'stand_in.py').write_text(STAND_IN)
  env = dict(run_env(1), PYTHONPATH=os.pathsep.join([str(tmp_path), run_env(1)['PYTHONPATH']]))
  for mode, signum, status in [('obey', signal.SIGINT, 0), ('ignore', signal.SIGTERM, 137)]:
    launcher = subprocess.Popen(
        [sys.executable, '-m', 'vivit.launch', '--processes=2', '--module=stand_in',
         '--stop_timeout=1', '--', mode], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    lines = []
    while sum('ready' in line for line in lines) < 2:
      lines.append(launcher.stdout.readline())
      assert lines[-1], lines
    launcher.send_signal(signum)
    out = ''.join(lines) + launcher.communicate(timeout=30)[0]
    assert launcher.returncode == status, out
    name = signal.Signals(signum).name
    if mode == 'obey':
      assert sorted(re.findall(rf'\[(\d)\] got {name}\n', out)) == ['0', '1'], out
    else:
      assert f'processes still running 1s after {name}; killing them' in out
