"""Hostile arguments and config fields: every numeric flag of every command and every
numeric config field is checked at the door (finite, whole where counted, in range);
a bad one is one line naming it and what it allows, exit status 2, before any work.
A fuzz test (hypothesis) over the commands' numeric flags and the config's numeric
fields: each invocation is refused with one line or gets to its work, never a
traceback, in bounded time and memory.

In process, each command's first call of real work (reading the checkpoint, starting
the processes, ...) is replaced by one that raises `Reached`: an argument set that
passes the checks stops there."""
import copy
import math
import os
import re
import resource
import subprocess
import sys
import time
from typing import Callable, Dict, List, NamedTuple

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from helpers import CONFIG, run_env, tiny_run_config
from vivit import cli, demo_video, evaluate, launch, predict, prepare, recipes, train
from vivit.convert import __main__ as convert_main
from vivit.recipes import load_config


class Reached(Exception):
  """The command got past its checks to the work it was asked for."""


def stop_here(calls: List):
  """A stand-in for a command's first call of real work: records its arguments in
  `calls`, then raises Reached."""
  def stop(*args, **kwargs):
    calls.append((args, kwargs))
    raise Reached
  return stop


def whole_in(low, high):
  """What the documentation allows a whole-number flag: a predicate of its text."""
  def allowed(text):
    try:
      return low <= int(text) <= high
    except ValueError:
      return False
  return allowed


def number_in(low, high, above=False):
  """What the documentation allows a number flag (`above`: `low` excluded)."""
  def allowed(text):
    try:
      value = float(text)
    except ValueError:
      return False
    return math.isfinite(value) and (low < value if above else low <= value) and value <= high
  return allowed


def views_allowed(text):
  try:
    clips, crops = (int(n) for n in text.lower().split('x'))
  except ValueError:
    return False
  return 1 <= clips <= 100 and crops in (1, 3)


class Command(NamedTuple):
  """A command in process: `main(argv)`; its argv is `before` + `required` (unless
  given) + the flags under test + `after`. `numeric`: {flag: (values it takes, what
  the documentation allows of each)}."""
  main: Callable
  before: List[str]
  required: Dict[str, str]
  after: List[str]
  numeric: Dict[str, tuple]

  def argv(self, flags: Dict[str, List[str]]) -> List[str]:
    given = dict(self.required, **flags)
    return self.before + [part for flag, values in given.items()
                          for part in [flag] + ([values] if isinstance(values, str)
                                                else list(values))] + self.after


PREDICT_FLAGS = {'--top': (1, whole_in(1, 2 ** 31 - 1)),
                 '--fps': (1, number_in(0, 1000, above=True)),
                 '--stride': (1, whole_in(1, 1000))}


@pytest.fixture
def commands(monkeypatch, tmp_path):
  """{name: Command} with each command's work replaced by `stop_here`; the calls it
  got in `commands['calls']`."""
  calls = []
  for module, name in ((predict, 'load'), (predict, 'predict'),
                       (prepare, 'prepare_dataset'), (launch, 'launch'),
                       (convert_main, 'resolve'), (demo_video, 'write_demo_video')):
    monkeypatch.setattr(module, name, stop_here(calls))
  monkeypatch.setattr(cli, 'print_devices', lambda **_: None)
  videos = tmp_path / 'videos'
  videos.mkdir()
  source = ['--checkpoint', str(tmp_path / 'no_checkpoint'), '--video',
            str(tmp_path / 'no_video.mp4')]
  size = (3, whole_in(1, 512))
  return {
      'calls': calls,
      'predict': Command(predict.main, source, {}, [], dict(
          PREDICT_FLAGS, **{'--views': (1, views_allowed)})),
      'predict --timeline': Command(
          predict.main, source + ['--timeline', str(tmp_path / 'timeline')], {}, [], dict(
              PREDICT_FLAGS, **{'--hop': (1, number_in(0, 1e6, above=True)),
                                '--batch': (1, whole_in(1, 256)),
                                '--smooth': (1, whole_in(1, 2 ** 31 - 1))})),
      'predict --explain': Command(
          predict.main, source + ['--explain', str(tmp_path / 'explain')], {}, [],
          {'--fps': PREDICT_FLAGS['--fps'], '--stride': PREDICT_FLAGS['--stride'],
           '--start': (1, number_in(0, 1e6))}),
      'prepare': Command(prepare.main, ['video_folder', '--videos', str(videos),
                                        '--data_dir', str(tmp_path / 'tfds')], {}, [],
                         {'--fps': (1, number_in(0, 1000)),
                          '--short_side': (1, whole_in(0, 4320)),
                          '--workers': (1, whole_in(1, 1024))}),
      'launch': Command(launch.main, [], {'--processes': '1'}, ['--', '--config', CONFIG],
                        {'--processes': (1, whole_in(1, 64)),
                         '--devices_per_process': (1, whole_in(1, 1024)),
                         '--stop_timeout': (1, number_in(0, 86400))}),
      'convert': Command(convert_main.main, ['--from', 'transformers', '--src',
                                             str(tmp_path / 'no_model'), '--dst',
                                             str(tmp_path / 'converted')], {}, [],
                         {'--num-classes': (1, whole_in(1, 100_000)),
                          '--input-size': size, '--trained-input-size': size}),
      'demo_video': Command(lambda argv: cli.run(demo_video._main, argv),
                            ['--video', str(tmp_path / 'demo.mp4')], {}, [],
                            {'--segments': (1, whole_in(1, 1000)),
                             '--fps': (1, number_in(0, 1000, above=True)),
                             '--seed': (1, whole_in(0, 2 ** 32 - 1))}),
  }


def run_in_process(command: Command, flags, capsys):
  """(exit status, or None where it reached its work; stderr) of `command` with `flags`."""
  try:
    status = command.main(command.argv(flags))
  except Reached:
    status = None
  out, err = capsys.readouterr()
  assert 'Traceback' not in out + err, err
  return status, err


# (command, flags, the one line's text after 'error: '): the cases first.
REFUSED = [
    ('predict --timeline', {'--hop': 'nan'},
     "argument --hop: 'nan' is not a finite number > 0 and <= 1e+06"),
    ('predict --timeline', {'--hop': 'inf'}, "argument --hop: 'inf' is not a finite number"),
    ('predict --explain', {'--start': 'nan'},
     "argument --start: 'nan' is not a finite number from 0 to 1e+06"),
    ('predict --explain', {'--start': 'inf'}, "argument --start: 'inf' is not a finite"),
    ('predict --explain', {'--start': '1e300'}, "argument --start: '1e300' is not a finite"),
    ('predict', {'--fps': 'nan'}, "argument --fps: 'nan' is not a finite number > 0 and "
                                  '<= 1000'),
    ('predict', {'--fps': 'inf'}, "argument --fps: 'inf' is not a finite number"),
    ('predict', {'--top': '0'}, "argument --top: '0' is not a whole number from 1 to "
                                '2147483647'),
    ('predict --timeline', {'--batch': '100000000'},
     "argument --batch: '100000000' is not a whole number from 1 to 256"),
    ('predict', {'--stride': '-1'}, "argument --stride: '-1' is not a whole number from 1 "
                                    'to 1000'),
    ('predict', {'--stride': '0'}, "argument --stride: '0' is not a whole number"),
    ('predict', {'--stride': '2.5'}, "argument --stride: '2.5' is not a whole number"),
    ('predict', {'--views': '1000x3'}, "--views '1000x3': clips from 1 to 100 and crops 1 "
                                       'or 3'),
    ('predict --timeline', {'--smooth': '1e9'}, "argument --smooth: '1e9' is not a whole"),
    ('prepare', {'--fps': 'nan'}, "argument --fps: 'nan' is not a finite number from 0 to "
                                  '1000'),
    ('prepare', {'--short_side': '-1'}, "argument --short_side: '-1' is not a whole number "
                                        'from 0 to 4320'),
    ('prepare', {'--workers': '0'}, "argument --workers: '0' is not a whole number from 1"),
    ('launch', {'--processes': '100000'}, "argument --processes: '100000' is not a whole "
                                          'number from 1 to 64'),
    ('launch', {'--devices_per_process': '0'}, "argument --devices_per_process: '0' is not"),
    ('launch', {'--stop_timeout': 'nan'}, "argument --stop_timeout: 'nan' is not a finite "
                                          'number from 0 to 86400'),
    ('convert', {'--num-classes': '0'}, "argument --num-classes: '0' is not a whole number "
                                        'from 1 to 100000'),
    ('convert', {'--input-size': ['16', 'nan', '224']},
     "argument --input-size: 'nan' is not a whole number from 1 to 512"),
    ('convert', {'--trained-input-size': ['16', '224', '100000']},
     "argument --trained-input-size: '100000' is not a whole number from 1 to 512"),
    ('demo_video', {'--segments': '0'}, "argument --segments: '0' is not a whole number"),
    ('demo_video', {'--fps': 'inf'}, "argument --fps: 'inf' is not a finite number"),
    ('demo_video', {'--seed': '-1'}, "argument --seed: '-1' is not a whole number from 0"),
]


@pytest.mark.parametrize('name, flags, message', REFUSED,
                         ids=[f'{n}:{" ".join(f)}' for n, f, _ in REFUSED])
def test_a_bad_number_is_one_line_naming_the_flag(commands, capsys, name, flags, message):
  status, err = run_in_process(commands[name], flags, capsys)
  assert status == 2, (status, err)
  assert err.startswith(f'error: {message}') and err.count('\n') == 1, err
  assert not commands['calls'], 'refused after its work began'


def test_numbers_in_range_reach_the_work_unchanged(commands, capsys):
  """The checks keep what they allow, at the bounds too."""
  status, _ = run_in_process(commands['predict'], {
      '--top': '1', '--fps': '12.5', '--stride': '1000', '--views': '100x3'}, capsys)
  assert status is None
  (_, kwargs), = commands['calls']
  assert (kwargs['top'], kwargs['fps'], kwargs['stride'], kwargs['views']) == (
      1, 12.5, 1000, '100x3')
  commands['calls'].clear()
  status, _ = run_in_process(commands['prepare'], {
      '--fps': '0', '--short_side': '4320', '--workers': '1024'}, capsys)
  assert status is None
  (_, kwargs), = commands['calls']
  assert (kwargs['resample'].fps, kwargs['resample'].short_side, kwargs['workers']) == (
      0, 4320, 1024)


def test_the_commands_refuse_before_any_work_as_processes(tmp_path):
  """Through the process boundary: `--batch 100000000` (which tried to allocate 286
  GiB), and a training config field that ended in a ZeroDivisionError traceback
  (evaluation shares the check: in process below): exit status 2, one line, no
  workdir made."""
  module = lambda name: [sys.executable, '-m', name]
  workdir = tmp_path / 'run'
  cases = [
      (module('vivit.predict') + ['--checkpoint', str(tmp_path / 'none'), '--video',
                                  str(tmp_path / 'none.mp4'), '--timeline',
                                  str(tmp_path / 'out'), '--batch', '100000000'],
       "error: argument --batch: '100000000' is not a whole number from 1 to 256 (see "
       'vivit-predict --help)'),
      (module('vivit.train') + [f'--config={CONFIG}', f'--workdir={workdir}',
                                '--config.training.log_every=0'],
       'error: training.log_every=0 is not a whole number from 1 to 2147483647'),
  ]
  processes = [subprocess.Popen(command, env=run_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for command, _ in cases]
  for (command, line), process in zip(cases, processes):
    _, err = process.communicate(timeout=300)
    assert process.returncode == 2, (command, err[-2000:])
    assert err.splitlines() == [line], (command, err[-2000:])
  assert not workdir.exists()


# (field, value, the one line's text after 'error: '): the cases first.
BAD_FIELDS = [
    ('training.batch_size', 0, 'training.batch_size=0 is not a whole number from 1 to '
                               '2147483647'),
    ('training.batch_size', -8, 'training.batch_size=-8 is not a whole number'),
    ('training.log_every', 0, 'training.log_every=0 is not a whole number'),
    ('training.checkpoint_every', 0, 'training.checkpoint_every=0 is not a whole number'),
    ('training.profile_steps', -1, 'training.profile_steps=-1 is not a whole number from 0 '
                                   'to 2147483647'),
    ('eval.batch_size', 0, 'eval.batch_size=0 is not a whole number'),
    ('training.num_epochs', float('nan'), 'training.num_epochs=nan is not a finite number '
                                          '> 0'),
    ('training.learning_rate', float('inf'), 'training.learning_rate=inf is not a finite '
                                             'number >= 0'),
    ('training.warmup_epochs', -1.0, 'training.warmup_epochs=-1.0 is not a finite number'),
    ('training.b2', 1.0, 'training.b2=1.0 is not a finite number >= 0 and < 1'),
    ('training.grad_clip', -1.0, 'training.grad_clip=-1.0 is not a finite number >= 0, '
                                 'or None'),
    ('training.mixup', -0.5, 'training.mixup=-0.5 is not a finite number >= 0'),
    ('training.label_smoothing', 2.0, 'training.label_smoothing=2.0 is not a finite number '
                                      'from 0 to 1'),
    ('eval.num_clips', 0, 'eval.num_clips=0 is not a whole number'),
    ('eval.num_crops', 2, 'eval.num_crops=2 is not 1 or 3'),
    ('dataset.num_frames', 0, 'dataset.num_frames=0 is not a whole number from 1 to '
                              '2147483647, or None'),
    ('dataset.stride', -1, 'dataset.stride=-1 is not a whole number'),
    ('dataset.crop_size', 0, 'dataset.crop_size=0 is not a whole number'),
    ('dataset.min_resize', -16, 'dataset.min_resize=-16 is not a whole number'),
    ('dataset.min_resize', 16, 'dataset.min_resize=16 is smaller than dataset.crop_size=32: '
                               'crops are cut from frames whose short side is min_resize'),
    ('dataset.scale_jitter', (1.33, 0.9), 'dataset.scale_jitter=(1.33, 0.9) is not (low, '
                                          'high) with 0 < low <= high'),
    ('dataset.colour_augment', 1.5, 'dataset.colour_augment=1.5 is not a finite number '
                                    'from 0 to 1'),
    ('dataset.colour_drop', float('nan'), 'dataset.colour_drop=nan is not a finite number'),
    ('mesh.fsdp', 0, 'mesh.fsdp=0 is not a whole number'),
    ('seed', -1, 'seed=-1 is not a whole number from 0 to 4294967295'),
]


def set_field(config, name, value):
  *sections, field = name.split('.')
  for section in sections:
    config = config[section]
  config[field] = value


@pytest.fixture
def config_commands(monkeypatch, tmp_path):
  """{'train': ..., 'evaluate': ...}: `f(config)` -> (status or None where it reached
  its work, stderr), as `vivit-train` / `vivit-evaluate` run the config (`cli.run`)."""
  calls = []
  monkeypatch.setattr(train, 'WorkdirLock', stop_here(calls))
  monkeypatch.setattr(evaluate, 'as_path', stop_here(calls))
  workdir = str(tmp_path / 'run')

  def runner(command):
    def run(config, capsys):
      try:
        status = cli.run(lambda _: command(config, workdir) and None, [])
      except Reached:
        status = None
      out, err = capsys.readouterr()
      assert 'Traceback' not in out + err, err
      return status, err
    return run
  return {'train': runner(train.train_and_evaluate), 'evaluate': runner(evaluate.run)}


@pytest.mark.parametrize('name, value, message', BAD_FIELDS,
                         ids=[f'{n}={v}' for n, v, _ in BAD_FIELDS])
def test_a_bad_config_field_is_one_line_naming_it(config_commands, capsys, name, value,
                                                  message):
  for command in ('train', 'evaluate'):
    config = load_config(CONFIG)
    set_field(config, name, value)
    status, err = config_commands[command](config, capsys)
    assert status == 2, (command, status, err)
    assert err.startswith(f'error: {message}') and err.count('\n') == 1, (command, err)


def test_the_shipped_configs_pass_the_check():
  for name in cli.config_names():
    recipes.check_config(load_config(cli.config_file(name).partition(':')[0]))


def test_less_than_one_step_of_training_is_refused(data_dir, tmp_path, capsys):
  """`num_epochs` x steps an epoch rounding to 0 steps trained nothing and said the
  workdir held the final checkpoint."""
  config = tiny_run_config(data_dir, **{'training.num_steps': None,
                                        'training.num_epochs': 0.01})
  assert cli.run(lambda _: train.train_and_evaluate(config, str(tmp_path / 'run')) and None,
                 []) == 2
  err = capsys.readouterr().err
  assert re.fullmatch(r'error: training\.num_epochs=0\.01 x \d+ steps an epoch \(training'
                      r'\.batch_size=8, \d+ training examples\) is less than one step: .*\n',
                      err), err


# Numbers and text a flag may be given: nan, inf, huge, tiny, negative, not numbers.
SPECIAL = ['nan', 'NaN', 'inf', '-inf', 'Infinity', '1e300', '-1e300', '1e-300', '-0',
           '0', '1', '2', '3', '0.5', '1e6', '1000', '1001', '256', '257', '2147483647',
           '2147483648', '4294967296', '9' * 5000, '', ' 4 ', '1_0', '0x10', '\x00', '1x1',
           '4x3', '101x1', '2x2', '1x3x1', 'x']
VALUES = st.one_of(
    st.sampled_from(SPECIAL), st.integers(-2 ** 70, 2 ** 70).map(str),
    st.floats().map(repr),  # nan and inf included
    st.text(max_size=6).filter(lambda text: not text.startswith('-')))  # not a flag
# Numbers every flag takes (half the values drawn, so that many invocations pass).
IN_RANGE = st.sampled_from(['1', '2', '3', '8', '4x3'])


def fuzz_commands(commands, capsys, examples):
  names = [name for name in commands if name != 'calls']
  outcomes = []

  @settings(max_examples=examples, deadline=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow])
  @given(st.sampled_from(names), st.data())
  def one_invocation(name, data):
    command = commands[name]
    chosen = data.draw(st.lists(st.sampled_from(sorted(command.numeric)), unique=True,
                                min_size=1, max_size=3))
    flags = {flag: data.draw(st.lists(st.one_of(IN_RANGE, VALUES),
                                      min_size=command.numeric[flag][0],
                                      max_size=command.numeric[flag][0]))
             for flag in chosen}
    allowed = all(all(map(command.numeric[flag][1], values))
                  for flag, values in flags.items())
    start = time.time()
    status, err = run_in_process(command, flags, capsys)
    assert time.time() - start < 10, (name, flags)
    if allowed:
      assert status is None, (name, flags, err)
    else:
      assert status == 2 and err.startswith('error: ') and err.count('\n') == 1, (
          name, flags, status, err)
    event('reached its work' if status is None else 'refused')
    outcomes.append(status)
  run_in_process(commands['predict'], {'--top': '0'}, capsys)  # imports done
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  one_invocation()
  grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
  assert grown_mb < 500, f'peak memory grew {grown_mb:.0f} MB'
  assert outcomes.count(None) >= examples // 10 and outcomes.count(2) >= examples // 2, \
      outcomes


FIELD_VALUES = st.one_of(st.none(), st.integers(-2 ** 40, 2 ** 40), st.floats(),
                         st.sampled_from([0, 1, -1, 0.5, 1.0, float('nan'), float('inf')]))


def fuzz_config_fields(config_commands, capsys, examples):
  base = load_config(CONFIG)
  names = sorted(recipes.FIELD_RANGES) + ['eval.num_crops', 'dataset.scale_jitter']
  outcomes = []

  @settings(max_examples=examples, deadline=None, derandomize=True,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
  @given(st.sampled_from(sorted(config_commands)), st.data())
  def one_run(command, data):
    config = copy.deepcopy(base)
    fields = data.draw(st.lists(st.sampled_from(names), unique=True, min_size=1,
                                max_size=2))
    values = {}
    for name in fields:
      value = data.draw(st.tuples(FIELD_VALUES, FIELD_VALUES)
                        if name == 'dataset.scale_jitter' else FIELD_VALUES)
      try:
        set_field(config, name, value)
      except (TypeError, ValueError):  # ml_collections: not of the field's type
        continue
      values[name] = value
    status, err = config_commands[command](config, capsys)
    if status == 2:
      assert err.startswith('error: ') and err.count('\n') == 1 and any(
          f'{name}=' in err for name in values), (values, err)
    else:
      assert status is None, (values, status, err)
    hostile = [name for name, value in values.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)
               and not (math.isfinite(value) and value >= 0)]
    assert not (hostile and status is None), f'{hostile} accepted: {values}'
    outcomes.append(status)
  one_run()
  assert outcomes.count(2) >= examples // 4, outcomes


def test_fuzzed_flags_are_refused_in_one_line_or_reach_the_work(commands, capsys):
  fuzz_commands(commands, capsys, examples=50)


def test_fuzzed_config_fields_are_refused_in_one_line_by_name(config_commands, capsys):
  fuzz_config_fields(config_commands, capsys, examples=40)


@pytest.mark.slow
def test_fuzzed_flags_longer(commands, capsys):
  fuzz_commands(commands, capsys, examples=1000)


@pytest.mark.slow
def test_fuzzed_config_fields_longer(config_commands, capsys):
  fuzz_config_fields(config_commands, capsys, examples=1000)
