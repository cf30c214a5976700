"""The right data with the right classes (issue 30, items 2 and 4).

A training workdir's evaluation runs on the dataset and with the eval settings its
training ran with (W/config.json), but for the command line's fields; no dataset
named anywhere is one line naming the flag. Wherever a checkpoint meets a dataset or
prints classes: a checkpoint with the dataset's classes in another order (a
converted HF model) is evaluated, and fine-tuned keeping its head, with its outputs
matched by name; other names are refused with one line (`workdir.class_order`);
predict refuses a checkpoint with more or fewer names than outputs
(`workdir.check_class_names`)."""
import json
import os
import sys

import numpy as np
import pytest

import video_files as vf
from helpers import (ROOT, random_params, run_env, tiny_model_config, tiny_run_config,
                     untrained_workdir)
from test_cli import run_all
from vivit import checkpoints, cli, evaluate, train
from vivit.convert import to_transformers
from vivit.datasets.synthetic import CLASS_NAMES
from vivit.errors import CheckpointError
from vivit.predict import main as predict_main
from vivit.recipes import load_config
from vivit.workdir import class_order

NAMES = list(CLASS_NAMES)
# The checkpoint's output i is the dataset's class REVERSED[i]: every class moves.
REVERSED = NAMES[::-1]


@pytest.fixture(scope='module')
def made(tmp_path_factory):
  """Params directories of one random tiny model for `synthetic_motion/tiny`'s 10
  classes: 'ordered' (the dataset's order), 'reversed' (the same function with its
  outputs and names in reverse), 'renamed' (a class named otherwise)."""
  root = tmp_path_factory.mktemp('classes')
  config = tiny_model_config(num_classes=len(NAMES))
  params = random_params(config)
  checkpoints.save_params(str(root / 'ordered'), config, params, NAMES)
  head = params['output_projection']
  reversed_params = dict(params, output_projection={'kernel': head['kernel'][:, ::-1],
                                                    'bias': head['bias'][::-1]})
  checkpoints.save_params(str(root / 'reversed'), config, reversed_params, REVERSED)
  checkpoints.save_params(str(root / 'renamed'), config, params,
                          NAMES[:-2] + ['juggling', 'knitting'])
  return root, params


def one_line_error(capsys, status) -> str:
  captured = capsys.readouterr()
  err = captured.err.strip()
  assert status == 2, (captured.out[-2000:], err)
  assert err.startswith('error: ') and '\n' not in err and 'Traceback' not in err, err
  return err


@pytest.fixture(scope='module')
def workdir(data_dir, tmp_path_factory):
  """A training of a tiny model on `synthetic_motion/tiny` (its test split, 2 clips
  a video), as `vivit-train` leaves it."""
  return untrained_workdir(tmp_path_factory.mktemp('evaluate') / 'run', data_dir,
                           tiny_model_config(num_classes=len(NAMES)), NAMES)


def test_evaluate_takes_the_workdirs_dataset_but_the_command_lines_fields(workdir,
                                                                          tmp_path):
  """`vivit-evaluate --config finetune` (no dataset, the validation split, 4x3 views)
  on W: W's dataset and split, W's views but --config.eval.num_clips; `vivit-train
  --config finetune` with a checkpoint and no dataset: one line naming the flag."""
  module = lambda name: [sys.executable, '-m', name, '--config=finetune']
  (status, out, err), (train_status, _, train_err) = run_all([
      module('vivit.evaluate') + [f'--workdir={workdir}', '--config.eval.num_clips=1'],
      module('vivit.train') + [f'--workdir={tmp_path / "ft"}',
                               f'--config.init_from.path={workdir}']], run_env())
  assert status == 0, err[-3000:]
  taken = [line for line in out.splitlines() if line.startswith(f'from {workdir}/config.json')]
  assert len(taken) == 1, out
  assert taken[0].startswith(
      f"from {workdir}/config.json, as its training ran: dataset.name='synthetic_motion/"
      f"tiny', dataset.data_dir=") and "dataset.test_split='test', eval.num_crops=1, " in (
          taken[0]) and 'eval.num_clips' not in taken[0], taken[0]
  with open(os.path.join(workdir, 'eval_results.json')) as f:
    saved = json.load(f)
  assert (saved['split'], saved['num_videos'], saved['num_clips'], saved['num_crops']) == (
      'test', 20, 1, 1)
  assert saved['class_names'] == NAMES
  assert train_status == 2 and train_err.startswith(
      'error: no dataset named: set --config.dataset.name') and train_err.count('\n') == 1, (
          train_err[-3000:])


def test_no_dataset_named_anywhere_is_one_line(tmp_path, capsys):
  """Neither the config, the command line nor the workdir (no training's) names a
  dataset: evaluate says which flag to set (train: the test above)."""
  config = load_config(os.path.join(ROOT, 'configs', 'finetune.py'))
  status = cli.run(lambda _: evaluate.run(config, str(tmp_path / 'new')) and None, [])
  err = capsys.readouterr().err
  assert status == 2 and err.startswith(
      'error: no dataset named: set --config.dataset.name') and err.count('\n') == 1, err


def test_class_order_maps_by_name_or_refuses():
  assert class_order(None, NAMES, 'c', 'd') is None  # unnamed: by position
  assert class_order(NAMES, NAMES, 'c', 'd') is None
  assert class_order(REVERSED, NAMES, 'c', 'd') == list(range(9, -1, -1))
  # Heads map as a whole, in the dataset's head order.
  assert class_order({'noun': ['cup', 'tap'], 'verb': ['put', 'take']},
                     {'verb': ['take', 'put'], 'noun': ['cup', 'tap']}, 'c', 'd') == [3, 2, 0, 1]
  with pytest.raises(CheckpointError, match=r"^c has other classes than dataset d \(2 "
                     r"named, the dataset 2; not in the checkpoint: 'take', 'put'; not in "
                     r"the dataset: 'verb:take', 'verb:put'\); hint$"):
    class_order({'verb': ['take', 'put']}, ['take', 'put'], 'c', 'd', 'hint')
  with pytest.raises(CheckpointError, match=r"\(3 named, the dataset 2\)$"):
    class_order(['a', 'b', 'b'], ['b', 'a'], 'c', 'd')
  with pytest.raises(CheckpointError, match=r"^c repeats class names \('b'\), so its"):
    class_order(['b', 'a', 'b'], ['a', 'b', 'b'], 'c', 'd')


def test_evaluate_maps_reordered_classes_by_name(made, data_dir, tmp_path, capsys):
  root, _ = made
  results = {}
  for name in ('ordered', 'reversed'):
    config = tiny_run_config(data_dir, **{'eval.num_clips': 1})
    results[name] = evaluate.run(config, str(tmp_path / name), checkpoint=str(root / name))
    out = capsys.readouterr().out
    mapped = 'in another order: its outputs are mapped to them by name' in out
    assert mapped == (name == 'reversed'), out
  assert results['reversed']['confusion_matrix'] == results['ordered']['confusion_matrix']
  assert results['reversed']['top1'] == results['ordered']['top1']
  assert results['reversed']['class_names'] == NAMES


def test_evaluate_refuses_other_class_names(made, data_dir, tmp_path, capsys):
  root, _ = made
  config = tiny_run_config(data_dir)
  status = cli.run(lambda _: evaluate.run(config, str(tmp_path / 'out'),
                                          checkpoint=str(root / 'renamed')) and None, [])
  err = one_line_error(capsys, status)
  assert (f"error: checkpoint {root / 'renamed'} has other classes than dataset "
          f"synthetic_motion/tiny (10 named, the dataset 10; not in the checkpoint: "
          f"'appear', 'vanish'; not in the dataset: 'juggling', 'knitting'); "
          f"evaluate it on the dataset it was trained on") in err, err
  assert not (tmp_path / 'out' / 'eval_results.json').exists()


class Reached(Exception):
  pass


def finetune_config(data_dir, checkpoint):
  """configs/finetune.py on `synthetic_motion/tiny`, keeping the head of `checkpoint`."""
  config = load_config(os.path.join(ROOT, 'configs', 'finetune.py'))
  config.dataset.update(name='synthetic_motion/tiny', data_dir=data_dir)
  config.training.update(batch_size=8, num_steps=2)
  config.init_from.update(path=checkpoint, restore_head=True)
  return config


def first_state_of_finetune(monkeypatch, data_dir, workdir, checkpoint):
  """The params `vivit-train --config finetune` starts from, keeping the head of
  `checkpoint` (init_from.restore_head), on `synthetic_motion/tiny`: the run stops
  once it has them."""
  states = []
  first_state = train._first_state

  def stop_after(*args):
    states.append(first_state(*args))
    raise Reached
  monkeypatch.setattr(train, '_first_state', stop_after)
  with pytest.raises(Reached):
    train.train_and_evaluate(finetune_config(data_dir, checkpoint), workdir)
  return states[0][1].params


def test_finetune_keeping_the_head_maps_its_outputs_by_name(made, data_dir, tmp_path,
                                                            monkeypatch):
  root, params = made
  workdir = tmp_path / 'ft'
  started = first_state_of_finetune(monkeypatch, data_dir, str(workdir),
                                    str(root / 'reversed'))
  for leaf in ('kernel', 'bias'):  # the reversed head back in the dataset's order
    np.testing.assert_array_equal(np.asarray(started['output_projection'][leaf]),
                                  params['output_projection'][leaf])
  assert ('output_projection: loaded (classes mapped by name to the order of '
          'synthetic_motion/tiny)') in (workdir / 'initialisation.txt').read_text()


def test_finetune_keeping_the_head_refuses_other_class_names(made, data_dir, tmp_path,
                                                             capsys):
  root, _ = made
  config = finetune_config(data_dir, str(root / 'renamed'))
  status = cli.run(lambda _: train.train_and_evaluate(config, str(tmp_path / 'ft'))
                   and None, [])
  err = one_line_error(capsys, status)
  assert "not in the dataset: 'juggling', 'knitting')" in err, err
  assert err.endswith('; set init_from.restore_head=False to train a new head'), err


def test_predict_refuses_more_or_fewer_names_than_outputs(made, data_dir, tmp_path,
                                                          capsys):
  """A workdir's class_names.json and an HF model's id2label, one name off."""
  video = vf.write_video(str(tmp_path / 'clip.mp4'), 12, 25, (20, 24))
  config = tiny_model_config(num_classes=len(NAMES))
  workdir = untrained_workdir(tmp_path / 'run', data_dir, config, NAMES + ['extra'])
  status = predict_main([f'--checkpoint={workdir}', f'--video={video}'])
  assert (f'{workdir}/class_names.json names 11 classes, but the model has 10'
          in one_line_error(capsys, status))
  hf = str(tmp_path / 'hf')
  to_transformers(config, made[1], hf, class_names=NAMES)
  with open(os.path.join(hf, 'config.json')) as f:
    hf_config = json.load(f)
  hf_config['id2label'] = {str(i): name for i, name in enumerate(NAMES[:-1])}
  with open(os.path.join(hf, 'config.json'), 'w') as f:
    json.dump(hf_config, f)
  status = predict_main([f'--checkpoint={hf}', f'--video={video}'])
  assert 'config.json id2label names 9 classes, but the model has 10' in one_line_error(
      capsys, status)
