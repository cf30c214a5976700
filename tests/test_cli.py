"""The commands as a user meets them: a typical mistake gives one `error: ...` line on
stderr naming the problem and exit status 2 (the traceback only with --verbose); the
console entry points answer --help with what they do and an example; the start-up
line names the devices, with a warning for JAX on the CPU beside an NVIDIA GPU, and
TensorFlow is kept off the GPUs. (That training prints no TensorFlow/oneDNN start-up
lines: `helpers.assert_quiet` on test_multiprocess.py's one-process runs of the
README's first command with tiny overrides.)"""
import os
import shutil
import subprocess
import sys
import sysconfig
import types


from helpers import CONFIG, cli_args, run_env
from vivit import cli

ENTRY_POINTS = ('vivit-train', 'vivit-evaluate', 'vivit-convert', 'vivit-predict',
                'vivit-prepare', 'vivit-launch', 'vivit-benchmark', 'vivit-export')


def run_all(commands, env):
  """Runs the commands at once; [(returncode, stdout, stderr)] in order."""
  processes = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for c in commands]
  results = []
  for process in processes:
    out, err = process.communicate(timeout=300)
    results.append((process.returncode, out, err))
  return results


def mistakes(tmp_path, data_dir):  # noqa: F811
  """(command, what the one-line error must say) for each command."""
  module = lambda name: [sys.executable, '-m', name]
  not_a_video = tmp_path / 'clip.mp4'
  not_a_video.write_text('not a video')
  return [
      (cli_args(data_dir, tmp_path / 'w') + ['--config.training.batch_sise=8'],
       'Did you mean "batch_size"'),
      (module('vivit.evaluate') + [f'--config={CONFIG}', f'--workdir={tmp_path / "none"}'],
       f'no best checkpoint under {tmp_path / "none"}/best'),
      (module('vivit.convert') + ['--from=transformers', f'--src={tmp_path / "hf"}',
                                  f'--dst={tmp_path / "out"}'],
       'is not a HuggingFace model directory'),
      (module('vivit.predict') + [f'--checkpoint={tmp_path}', f'--video={not_a_video}'],
       'cannot tell the format of the checkpoint'),
      (module('vivit.prepare') + ['kinetics400', f'--videos={tmp_path / "missing"}',
                                  f'--data_dir={tmp_path / "tfds"}'],
       '--videos'),
      (module('vivit.launch') + ['--processes=0', '--', f'--config={CONFIG}'],
       "argument --processes: '0' is not a whole number from 1 to 64"),
      (module('vivit.benchmark') + ['--variants=5', f'--out={tmp_path / "bench"}'],
       "--variants 5: unknown variant '5'"),
      (module('vivit.export') + [f'--checkpoint={tmp_path}', f'--out={tmp_path / "served"}'],
       'cannot tell the format of the checkpoint'),
  ]


def test_user_mistakes_are_one_line_errors_with_status_2(tmp_path, data_dir):  # noqa: F811
  cases = mistakes(tmp_path, data_dir)
  results = run_all([command for command, _ in cases], run_env())
  for (command, expected), (status, out, err) in zip(cases, results):
    lines = err.strip().splitlines()
    assert status == 2, (command, status, err[-2000:])
    assert len(lines) == 1 and lines[0].startswith('error: '), (command, err[-2000:])
    assert expected in lines[0], (command, lines[0])
    assert 'Traceback' not in out + err
  # --verbose (or VIVIT_VERBOSE=1) shows where it came from.
  verbose = run_all([command + ['--verbose'] for command, _ in cases], run_env())
  for (command, _), (status, _, err) in zip(cases, verbose):
    assert status != 0 and 'Traceback (most recent call last)' in err, (command, err[-2000:])


def installed_script(name):
  """`name` on PATH, else in this interpreter's scripts directory (where pip puts
  it, e.g. behind pyenv shims not yet rehashed)."""
  beside = os.path.join(sysconfig.get_path('scripts'), name)
  return shutil.which(name) or (beside if os.path.exists(beside) else None)


def test_entry_points_answer_help():
  scripts = {name: installed_script(name) for name in ENTRY_POINTS}
  missing = [name for name, path in scripts.items() if path is None]
  assert not missing, f'not installed: {missing} (pip install -e . installs them)'
  results = run_all([[scripts[name], '--help'] for name in ENTRY_POINTS], run_env())
  for name, (status, out, err) in zip(ENTRY_POINTS, results):
    assert status == 0, (name, err[-2000:])
    head = out.strip().splitlines()[:15]
    # What it does, then an example of it.
    assert any(line.startswith(f'  {name} ') for line in head), (name, head)


def test_devices_line():
  assert (cli.devices_line('gpu', ['NVIDIA H100 80GB HBM3'] * 8, 1)
          == 'devices: 8 x NVIDIA H100 80GB HBM3 (gpu)')
  assert (cli.devices_line('tpu', ['TPU v5 lite'] * 16, 4)
          == 'devices: 16 x TPU v5 lite (tpu), 4 processes')
  assert cli.devices_line('cpu', ['cpu'], 1) == 'devices: 1 x cpu (cpu)'


def test_warning_for_jax_on_the_cpu_beside_an_nvidia_gpu(monkeypatch, capsys):
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  warning = cli.cpu_warning('cpu', lambda: True)
  assert warning.startswith('warning: ') and '\n' not in warning
  assert 'NVIDIA GPU' in warning and warning.endswith('pip install -e ".[cuda12]"')
  assert cli.cpu_warning('gpu', lambda: True) is None
  assert cli.cpu_warning('cpu', lambda: False) is None
  cli.print_devices(nvidia_present=lambda: True)  # this process: JAX on the CPU
  out, err = capsys.readouterr()
  assert out.startswith('devices: ') and out.endswith(' x cpu (cpu)\n'), out
  assert err == warning + '\n'
  cli.print_devices(line=False, nvidia_present=lambda: False)
  assert capsys.readouterr() == ('', '')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')  # CPU by choice
  assert cli.cpu_warning('cpu', lambda: True) is None


def test_tensorflow_is_kept_off_the_gpus_before_the_command(monkeypatch):
  calls = []
  tf = types.SimpleNamespace(config=types.SimpleNamespace(
      set_visible_devices=lambda *a: calls.append(a)))
  monkeypatch.setitem(sys.modules, 'tensorflow', tf)  # (the real one takes 4 s to load)
  monkeypatch.setattr(cli, 'quiet_libraries', lambda: None)
  monkeypatch.setattr(cli, 'nvidia_gpu_present', lambda: True)
  cli.hide_gpus_from_tensorflow.cache_clear()
  try:
    assert cli.run(lambda argv: 0 if calls == [([], 'GPU')] else 1, []) == 0
    monkeypatch.setattr(cli, 'nvidia_gpu_present', lambda: False)
    cli.hide_gpus_from_tensorflow.cache_clear()
    cli.hide_gpus_from_tensorflow()
    assert len(calls) == 1  # no NVIDIA GPU: TensorFlow is not even imported for it
  finally:
    cli.hide_gpus_from_tensorflow.cache_clear()


def test_durations_as_the_progress_lines_show_them():
  assert [cli.duration(s) for s in (42, 187, 3725)] == ['42s', '3m07s', '1h02m']
