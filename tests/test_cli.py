"""The commands as a user meets them: a typical mistake gives one `error: ...` line on
stderr naming the problem and exit status 2 (the traceback only with --verbose);
training prints no TensorFlow/oneDNN start-up lines; the console entry points
answer --help with what they do and an example."""
import shutil
import subprocess
import sys


from test_train import CONFIG, cli_args, data_dir, run_env  # noqa: F401

ENTRY_POINTS = ('vivit-train', 'vivit-evaluate', 'vivit-convert', 'vivit-predict',
                'vivit-prepare', 'vivit-launch')


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
      (module('vivit.data.prepare') + ['kinetics400', f'--videos={tmp_path / "missing"}',
                                       f'--data_dir={tmp_path / "tfds"}'],
       '--videos'),
      (module('vivit.launch') + ['--processes=0', '--', f'--config={CONFIG}'],
       '--processes (0)'),
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
  verbose = run_all([cases[0][0] + ['--verbose'], cases[3][0] + ['--verbose']], run_env())
  for status, _, err in verbose:
    assert status != 0 and 'Traceback (most recent call last)' in err


def test_training_output_has_no_library_banners(tmp_path, data_dir):  # noqa: F811
  result = subprocess.run(cli_args(data_dir, tmp_path / 'quiet', **{
      'training.num_steps': 2, 'training.eval_every': 2}), env=run_env(),
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  output = result.stdout + result.stderr
  for banner in ('oneDNN', 'TensorFlow', 'absl::InitializeLog', 'cuda', 'I0000',
                 'Downloading and preparing'):
    assert banner not in output, output[-3000:]
  assert 'step 2/2 | loss' in result.stdout and 'validation top-1' in result.stdout


def test_entry_points_answer_help():
  missing = [name for name in ENTRY_POINTS if shutil.which(name) is None]
  assert not missing, f'not installed: {missing} (pip install -e . installs them)'
  results = run_all([[name, '--help'] for name in ENTRY_POINTS], run_env())
  for name, (status, out, err) in zip(ENTRY_POINTS, results):
    assert status == 0, (name, err[-2000:])
    head = out.strip().splitlines()[:15]
    # What it does, then an example of it.
    assert any(line.startswith(f'  {name} ') for line in head), (name, head)
