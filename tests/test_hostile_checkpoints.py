"""Checkpoints as untrusted input (issue 29): a params directory whose array declares
a huge shape is refused from its metadata, in bounded memory; every malformed file
(HF config.json, safetensors, shard index, id2label, class_names.json,
model_config.json, params files) is one line naming it; a shard index naming files
outside the checkpoint is refused unread; a checkpoint's stored config never picks
what else predict opens; Hub ids go to the Hub only where they cannot be a local
path the user meant (`vivit.hub`). All offline."""
import json
import os
import re
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import video_files as vf
from helpers import random_params, run_env, tiny_model_config
from test_hostile_videos import run_measured
from vivit import checkpoints, hub, inference, task
from vivit.checkpoints import load_params, save_params
from vivit.convert import to_transformers
from vivit.convert import transformers as hf_reader
from vivit.convert.__main__ import main as convert_main
from vivit.errors import CheckpointError, ConfigError, MissingError
from vivit.predict import main as predict_main
from vivit.workdir import record_workdir_model

NAMES = ['archery', 'bowling', 'cooking', 'dancing', 'eating']
# The shape the bomb's output kernel declares: 16 x 2^32 float32 zeros, 256 GiB.
BOMB_SHAPE = (16, 2**32)


@pytest.fixture(scope='module')
def made(tmp_path_factory):
  """Pristine checkpoints of one tiny model, to copy and damage: a params directory,
  an HF directory, and a video it takes."""
  root = tmp_path_factory.mktemp('hostile')
  config = tiny_model_config()
  params = random_params(config)
  save_params(str(root / 'ours'), config, params, NAMES)
  to_transformers(config, params, str(root / 'hf'), class_names=NAMES)
  video = vf.write_video(str(root / 'clip.mp4'), 12, 25, (20, 24))
  return root, video


def copy_of(made, tmp_path, name):
  shutil.copytree(made[0] / name, tmp_path / name)
  return tmp_path / name


def one_line_error(capsys, status) -> str:
  """The error line of a command that returned `status`, checked to be one line."""
  captured = capsys.readouterr()
  err = captured.err.strip()
  assert status == 2, (captured.out, err)
  assert err.startswith('error: ') and '\n' not in err and 'Traceback' not in err, err
  return err


def _json(path, value):
  path.write_text(json.dumps(value))


def _edit_json(path, **fields):
  value = json.loads(path.read_text())
  value.update(fields)
  _json(path, value)


def _shard(hf, index):
  """The HF directory `hf` as one shard named in `index` (a JSON value)."""
  os.rename(hf / 'model.safetensors', hf / 'model-00001-of-00001.safetensors')
  _json(hf / 'model.safetensors.index.json', index)


def _truncate(path, keep=0.5):
  data = path.read_bytes()
  path.write_bytes(data[:int(len(data) * keep)])


def redeclare(params_dir, name, **declared):
  """Re-creates array `name` ('output_projection.kernel') of the orbax tree
  `params_dir` as tensorstore `declared` it (shape, dtype, chunk_layout), with no
  chunk written (tensorstore reads missing chunks as zeros): a zarr array in the
  OCDBT database, as orbax stores it."""
  import tensorstore as ts
  spec = {'driver': 'zarr', 'path': name,
          'kvstore': {'driver': 'ocdbt', 'base': f'file://{params_dir}'}}
  stored = ts.open(spec).result()
  declared = dict(dict(dtype=stored.dtype, shape=stored.shape), **declared)
  ts.open(spec, create=True, delete_existing=True, **declared).result()


def test_shape_bomb_is_refused_from_its_metadata_in_bounded_memory(made, tmp_path):
  """`vivit-predict` on a params directory whose output kernel declares 256 GiB of
  zeros: one line, exit 2, under 2 GB peak (it used to allocate past 6 GB)."""
  bomb = copy_of(made, tmp_path, 'ours')
  redeclare(bomb / 'params', 'output_projection.kernel', shape=BOMB_SHAPE)
  status, _, err, peak_mb = run_measured(
      [sys.executable, '-m', 'vivit.predict', f'--checkpoint={bomb}', f'--video={made[1]}'])
  err = err.strip()
  assert status == 2, err[-3000:]
  assert err.startswith('error: ') and '\n' not in err, err[-3000:]
  assert f'{bomb}/params' in err and 'output_projection/kernel has shape' in err, err
  assert str(BOMB_SHAPE) in err, err
  assert peak_mb < 2048, f'peak RSS {peak_mb:.0f} MB'


def test_dtypes_and_chunks_are_checked_before_reading(made, tmp_path):
  import tensorstore as ts
  bomb = copy_of(made, tmp_path, 'ours')
  redeclare(bomb / 'params', 'output_projection.kernel', dtype=ts.int32)
  with pytest.raises(CheckpointError, match='output_projection/kernel is stored as int32'):
    load_params(str(bomb))
  bomb = copy_of(made, tmp_path / 'chunks', 'ours')
  redeclare(bomb / 'params', 'output_projection.kernel',
            chunk_layout=ts.ChunkLayout(chunk_shape=[16, 2**30]))
  with pytest.raises(CheckpointError, match=re.escape(
      'output_projection/kernel of shape (16, 5) is stored in chunks of (16, 1073741824)')):
    load_params(str(bomb))


def test_a_bomb_its_config_agrees_with_is_refused_unread(made, tmp_path):
  """model_config.json and the metadata agree on 2^28 classes (16 GiB of zeros in a
  few KB of files): refused by the bytes its files hold, before reading."""
  bomb = copy_of(made, tmp_path, 'ours')
  redeclare(bomb / 'params', 'output_projection.kernel', shape=(16, 2**28))
  redeclare(bomb / 'params', 'output_projection.bias', shape=(2**28,))
  _edit_json(bomb / 'model_config.json', num_classes=2**28)
  with pytest.raises(CheckpointError, match=r'(more than this machine|of params in \d+ '
                                            r'bytes of files)'):
    load_params(str(bomb))


def test_a_workdirs_params_are_read_alone(tmp_path):
  """A training workdir: its latest train state's params are read alone (an
  opt_state array declaring 256 GiB is never read), its best params once it has
  some."""
  config = tiny_model_config()
  params, best_params = random_params(config), random_params(config, seed=1)
  last, best = checkpoints.train_managers(tmp_path, keep=1)
  checkpoints.save(last, 3, {'step': np.asarray(3, np.int32), 'params': params,
                             'opt_state': {'mu': np.zeros(4, np.float32)}})
  record_workdir_model(tmp_path, config)
  redeclare(tmp_path / 'checkpoints' / '3' / 'default', 'opt_state.mu', shape=BOMB_SHAPE)
  kernel = lambda p: p['output_projection']['kernel']
  np.testing.assert_array_equal(kernel(load_params(str(tmp_path))[1]), kernel(params))
  checkpoints.save(best, 3, best_params, metrics={'top1': 0.5})
  np.testing.assert_array_equal(kernel(load_params(str(tmp_path))[1]),
                                kernel(best_params))
  last.close()
  best.close()


# (what is damaged, how, what the line says)
HF, OURS = 'hf', 'ours'
MALFORMED = {
    'hf config.json not JSON': (
        HF, lambda d: (d / 'config.json').write_text('{"model_type": "vivit",'),
        'config.json is not an HF model config: Expecting'),
    'hf config.json a list': (
        HF, lambda d: _json(d / 'config.json', [1, 2]),
        'config.json is not an HF model config: a JSON list'),
    'hf hidden_size a string': (
        HF, lambda d: _edit_json(d / 'config.json', hidden_size='16'),
        'config.json: hidden_size is "16"; expected an integer >= 1'),
    'truncated safetensors': (
        HF, lambda d: _truncate(d / 'model.safetensors'),
        'model.safetensors cannot be read as weights (damaged or truncated?)'),
    'git lfs pointer': (
        HF, lambda d: (d / 'model.safetensors').write_text(
            'version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 123\n'),
        'model.safetensors is a Git LFS pointer, not the weights'),
    'index without weight_map': (
        HF, lambda d: _shard(d, {'metadata': {}}),
        'model.safetensors.index.json is not a safetensors shard index: no "weight_map"'),
    'index names a file outside': (
        HF, lambda d: _shard(d, {'weight_map': {'classifier.weight': '../outside.safetensors'}}),
        "names weight file '../outside.safetensors' outside the checkpoint directory"),
    'index names an absolute path': (
        HF, lambda d: _shard(d, {'weight_map': {'classifier.weight': '/etc/passwd'}}),
        "names weight file '/etc/passwd' outside the checkpoint directory"),
    'id2label keys not integers': (
        HF, lambda d: _edit_json(d / 'config.json',
                                 id2label={k: k for k in 'abcde'}),
        "config.json: id2label has the key 'a'; expected class indices 0..4"),
    'class_names.json not a list': (
        OURS, lambda d: _json(d / 'class_names.json', {'label': 'archery'}),
        "class_names.json is not a list of class names (printable strings): head 'label'"),
    'class_names.json numbers': (
        OURS, lambda d: _json(d / 'class_names.json', [1, 2, 3, 4, 5]),
        'class_names.json is not a list of class names'),
    'class_names.json too few': (
        OURS, lambda d: _json(d / 'class_names.json', NAMES[:3]),
        'class_names.json names 3 classes, but the model has 5'),
    'model_config.json field of the wrong type': (
        OURS, lambda d: _edit_json(d / 'model_config.json', hidden_size='16'),
        'model_config.json: model.hidden_size is "16"; expected an integer from 0'),
    'model_config.json tuple of the wrong kind': (
        OURS, lambda d: _edit_json(d / 'model_config.json', tubelet=[2, 'x', 8]),
        'model_config.json: model.tubelet is [2, "x", 8]; expected 3 integers'),
    'model_config.json not an object': (
        OURS, lambda d: _json(d / 'model_config.json', 'hello'),
        'model_config.json: the model config is a JSON str, not an object of fields'),
    'params metadata damaged': (
        OURS, lambda d: (d / 'params' / '_METADATA').write_text('{"tree_metadata": '),
        'cannot be read (damaged or not an orbax checkpoint?)'),
}


@pytest.mark.parametrize('case', sorted(MALFORMED))
def test_malformed_files_are_one_line_naming_the_file(case, made, tmp_path, capsys):
  kind, damage, expected = MALFORMED[case]
  checkpoint = copy_of(made, tmp_path, kind)
  damage(checkpoint)
  status = predict_main([f'--checkpoint={checkpoint}', f'--video={made[1]}'])
  err = one_line_error(capsys, status)
  assert expected in err and str(checkpoint) in err, err
  if kind == HF:  # the converter reads the same files
    status = convert_main(['--from=transformers', f'--src={checkpoint}',
                           f'--dst={tmp_path / "out"}'])
    assert expected in one_line_error(capsys, status)


def test_damaged_params_data_is_one_line(made, tmp_path, capsys):
  checkpoint = copy_of(made, tmp_path, OURS)
  for directory, _, names in os.walk(checkpoint / 'params' / 'd'):
    for name in names:
      _truncate(pathlib.Path(directory, name), keep=0.3)
  status = predict_main([f'--checkpoint={checkpoint}', f'--video={made[1]}'])
  err = one_line_error(capsys, status)
  assert f'checkpoint {checkpoint}/params cannot be read' in err, err


def test_shard_index_outside_the_directory_is_never_read(made, tmp_path, monkeypatch):
  checkpoint = copy_of(made, tmp_path, HF)
  shutil.copy(checkpoint / 'model.safetensors', tmp_path / 'outside.safetensors')
  _shard(checkpoint, {'weight_map': {'classifier.weight': 'model-00001-of-00001.safetensors',
                                     'layernorm.weight': '../outside.safetensors'}})
  read = []
  monkeypatch.setattr(hf_reader, '_read_weight_file',
                      lambda path: read.append(path) or {})
  with pytest.raises(CheckpointError, match=re.escape(
      "names weight file '../outside.safetensors' outside the checkpoint directory")):
    hf_reader.read_weights(str(checkpoint))
  assert read == []


def test_convert_refuses_a_shard_outside_in_one_line(made, tmp_path):
  """The process boundary: exit 2, stderr one line, nothing written."""
  checkpoint = copy_of(made, tmp_path, HF)
  _shard(checkpoint, {'weight_map': {'classifier.weight': '../../outside.safetensors'}})
  result = subprocess.run(
      [sys.executable, '-m', 'vivit.convert', '--from=transformers',
       f'--src={checkpoint}', f'--dst={tmp_path / "out"}'],
      env=run_env(), capture_output=True, text=True, timeout=300)
  err = result.stderr.strip()
  assert result.returncode == 2 and err.startswith('error: ') and '\n' not in err, err
  assert 'outside the checkpoint directory' in err
  assert not (tmp_path / 'out').exists()


def _workdir_shaped(checkpoint, dataset):
  """Makes a params directory look like a training workdir: a config.json whose
  dataset section is `dataset`, and a checkpoints/ directory."""
  _json(checkpoint / 'config.json', {'dataset': dataset})
  (checkpoint / 'checkpoints').mkdir()
  (checkpoint / 'checkpoints' / 'note').write_text('a file: a Hub snapshot keeps it')


def test_a_checkpoints_stored_config_never_picks_what_is_opened(made, tmp_path,
                                                                monkeypatch, capsys):
  pytest.importorskip('huggingface_hub')
  from test_hub import MAIN, add_snapshot
  monkeypatch.chdir(tmp_path)  # no org/ here: org/evil is a Hub id
  opened = []
  monkeypatch.setattr(task.tfds, 'builder', lambda *a, **k: opened.append(a) or 1 / 0)
  evil = copy_of(made, tmp_path, OURS)
  _workdir_shaped(evil, {'name': 'evil_dataset', 'data_dir': '/elsewhere',
                         'stride': 7, 'min_resize': 9999})
  # From the Hub: never trusted.
  home = tmp_path / 'home'
  add_snapshot(str(home / 'hub'), 'org/evil', MAIN, str(evil), refs=['main'])
  import huggingface_hub
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(home / 'hub'))
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
  monkeypatch.setenv('HF_HUB_OFFLINE', '1')
  for checkpoint in ('org/evil', 'hf://org/evil'):
    setup = inference.load(checkpoint)
    assert (setup.fps, setup.stride, setup.min_resize) == (
        inference.DEFAULT_FPS, inference.DEFAULT_STRIDE, task.min_resize(16))
  assert predict_main(['--checkpoint=org/evil', f'--video={made[1]}', '--top=1']) == 0
  assert capsys.readouterr().out.split()[0] in NAMES
  # Not a training workdir (no checkpoints/ or best/): its config.json is not read.
  shutil.rmtree(evil / 'checkpoints')
  assert inference.load(str(evil)).stride == inference.DEFAULT_STRIDE
  assert opened == []
  # The user's own workdir is trusted: its settings are used (the builder opened).
  (evil / 'checkpoints').mkdir()
  setup = inference.load(str(evil))
  assert (setup.stride, setup.min_resize, setup.fps) == (7, 9999, inference.DEFAULT_FPS)
  assert opened == [('evil_dataset',)]


def test_a_trusted_workdirs_bad_config_is_one_line(made, tmp_path):
  checkpoint = copy_of(made, tmp_path, OURS)
  _workdir_shaped(checkpoint, {'stride': -3})
  with pytest.raises(CheckpointError, match=re.escape(
      f'{checkpoint}/config.json: dataset.stride is -3; expected an integer from 1')):
    inference.load(str(checkpoint))
  (checkpoint / 'config.json').write_text('[')
  with pytest.raises(CheckpointError, match=re.escape(
      f'{checkpoint}/config.json is not a run config:')):
    inference.load(str(checkpoint))


def test_which_names_go_to_the_hub(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'runs' / 'demo').mkdir(parents=True)
  assert hub.hub_id('runs/demo') is None  # an existing path
  assert hub.hub_id('runs/demx') is None  # runs/ is here: a mistyped local path
  assert hub.hub_id('org/name') == ('org/name', None)  # no org/ here
  assert hub.hub_id('org/name@v1') == ('org/name', 'v1')
  assert hub.hub_id('hf://runs/demo') == ('runs/demo', None)  # explicit
  assert hub.hub_id('hf://runs/demo@refs/pr/1') == ('runs/demo', 'refs/pr/1')
  for path in ('./org/name', '../org/name', '~/org/name', '/org/name', 'gs://org/name',
               'org/name@../../x', 'org/name@a/./b', 'org/name/x'):
    assert hub.hub_id(path) is None, path
  with pytest.raises(MissingError, match=re.escape(
      'runs/demx does not exist (a local path, as runs/ is a local directory; '
      'hf://runs/demx reads the Hugging Face Hub model of that name)')):
    hub.resolve('runs/demx')
  assert hub.resolve('runs/demo') == 'runs/demo'
  for bad in ('hf://name', 'hf://org/name@..', 'hf://'):
    with pytest.raises(ConfigError, match='a Hugging Face Hub id is hf://org/name'):
      hub.hub_id(bad)


def test_ids_huggingface_hub_refuses_are_one_line(made, tmp_path, monkeypatch, capsys):
  pytest.importorskip('huggingface_hub')
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'runs').mkdir()
  for source, expected in (
      ('a--b/c', 'a--b/c is neither a local path nor a valid Hugging Face Hub id'),
      ('org/' + 'x' * 100, 'is neither a local path nor a valid Hugging Face Hub id'),
      ('org/name-', 'org/name- is neither a local path nor a valid Hugging Face Hub id'),
      ('runs/demo', 'runs/demo does not exist (a local path')):
    status = convert_main(['--from=transformers', f'--src={source}', '--dst=out'])
    assert expected in one_line_error(capsys, status), source
  status = predict_main(['--checkpoint=runs/demo', f'--video={made[1]}'])
  assert 'runs/demo does not exist' in one_line_error(capsys, status)
