"""`vivit-predict --explain`: the class explained (named, or the most probable), the
files and the errors (the relevance itself: test_relevance.py)."""
import os
import re

import jax
import numpy as np
import pytest
from PIL import Image

import video_files as vf
from helpers import HEADS
from vivit import explain, inference, predict
from vivit.models import build_model


@pytest.fixture(scope='module')
def video(tmp_path_factory):
  """1 s of noise at 25 fps, 20x24."""
  rng = np.random.RandomState(0)
  frames = (rng.randint(0, 256, (20, 24, 3), np.uint8) for _ in range(25))
  return vf.write_frames(str(tmp_path_factory.mktemp('noise') / 'noise.mp4'), frames)


def test_explain_files(two_head_checkpoint, video, tmp_path, capsys):
  out = str(tmp_path / 'noise')
  assert predict.main(['--checkpoint', two_head_checkpoint, '--video', video,
                       '--explain', out,
                       '--class', 'knife']) == 0
  printed = capsys.readouterr().out.splitlines()
  assert re.fullmatch(r'knife \(noun, probability 0\.\d{3}\): gradient relevance',
                      printed[0]), printed
  assert printed[1:] == [out + '.png', out + '.gif', out + '.npz']
  saved = np.load(out + '.npz')
  assert saved['tokens'].shape == (2, 2, 2) and saved['tokens'].sum() == pytest.approx(1)
  assert (str(saved['class_name']), str(saved['method'])) == ('knife', 'gradient')
  with Image.open(out + '.gif') as gif:
    assert gif.n_frames == 4  # the clip's frames, each beside its overlay
    assert gif.width == 2 * gif.height >= 2 * explain.DISPLAY_SIZE
  with Image.open(out + '.png') as png:
    assert png.width >= 400 and png.height >= 300
  # No class named: the first head's most probable class, and a CLS model's rollout.
  setup = inference.load(two_head_checkpoint)
  clip = inference.video_views(video, fps=25, num_clips=1, num_crops=1,
                               **setup.view())[0]
  logits = jax.jit(build_model(setup.model_config).apply)({'params': setup.params},
                                                         clip[None])
  result = explain.explain(setup, clip)
  assert result.class_name == HEADS['verb'][int(np.argmax(logits[0, :2]))]
  assert (result.head, result.method) == ('verb', 'rollout')


def test_a_named_class_is_found_in_its_head():
  names = {'verb': ['take', 'open:close'], 'noun': ['take', 'tap']}
  probabilities = {'verb': np.array([0.3, 0.7]), 'noun': np.array([0.9, 0.1])}
  assert explain._target(names, probabilities, None) == ('verb', 1, 1)
  assert explain._target(names, probabilities, 'tap') == ('noun', 1, 3)
  assert explain._target(names, probabilities, 'noun:take') == ('noun', 0, 2)
  assert explain._target(names, probabilities, 'open:close') == ('verb', 1, 1)
  with pytest.raises(ValueError, match='in several heads, name one as HEAD:NAME'):
    explain._target(names, probabilities, 'take')


@pytest.mark.parametrize('args, message', [
    (['--explain', 'X', '--class', 'spoon'], r"--class 'spoon': no such class \(verb: "
                                             r'take, put; noun: cup, knife, tap\)'),
    (['--explain', 'X', '--class', 'cup', '--method', 'rollout'],
     r'--method rollout is the same for every class'),
    (['--explain', 'X', '--views', '2x1'], r'--explain with --views'),
    (['--explain', 'X', '--timeline', 'Y'], r'--timeline and --explain: one at a time'),
    (['--class', 'cup'], r'--class: only with --explain'),
    (['--start', '0.1'], r'--start: only with --explain'),
    (['--explain', 'X', '--start', '0.8'], r'from 0\.8s: 0\.20s of video at 25 fps is '
                                           r'shorter than one clip \(8 frames, 0\.32s\)'),
    (['--explain', 'X', '--start', '-1'], r"argument --start: '-1' is not a finite number "
                                          r'from 0 to 1e\+06'),
    (['--explain', 'X', '--top', '3'], r'--explain with --top'),
    (['--explain', 'X', '--method', 'lrp'], r"argument --method: invalid choice: 'lrp'"),
    (['--explain', 'X', '--fps', '3'], r'1\.00s of video at 3 fps is shorter than one '
                                       r'clip \(8 frames, 2\.67s\)'),
])
def test_bad_arguments_are_one_line_errors(two_head_checkpoint, video, tmp_path, capsys,
                                           args,
                                           message):
  args = [str(tmp_path / a) if a in 'XY' else a for a in args]
  try:
    status = predict.main(['--checkpoint', two_head_checkpoint, '--video', video] + args)
  except SystemExit as exit:  # argparse's own errors
    status = exit.code
  assert status == 2
  error = capsys.readouterr().err
  assert error.startswith('error: ') and error.count('\n') == 1
  assert re.search(message, error), error
  assert not os.listdir(tmp_path)


def test_a_max_pooling_model_is_a_one_line_error(video, tmp_path, capsys):
  from helpers import random_params, tiny_model_config
  from vivit import checkpoints
  config = tiny_model_config(classifier='gmp')
  checkpoint = str(tmp_path / 'params')
  checkpoints.save_params(checkpoint, config, random_params(config), HEADS)
  out = str(tmp_path / 'out')
  assert predict.main(['--checkpoint', checkpoint, '--video', video,
                       '--explain', out]) == 2
  error = capsys.readouterr().err
  assert error.startswith("error: explaining a model is not supported for classifier "
                          "'gmp': ") and error.count('\n') == 1, error
  assert not [f for f in os.listdir(tmp_path) if f.startswith('out')]
