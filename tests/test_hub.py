"""Hugging Face Hub ids as checkpoints (`vivit.hub`), fully offline: a Hub cache in
huggingface_hub's own layout (refs, snapshots linking to blobs) holds a tiny HF
ViViT, read with HF_HUB_OFFLINE on by `vivit-convert`, `init_from.path`,
`vivit-predict` and `vivit-evaluate`'s reader."""
import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import video_files as vf
from helpers import random_params, tiny_model_config
from vivit import hub
from vivit.checkpoints import load_params
from vivit.convert import read_checkpoint, to_transformers
from vivit.convert.__main__ import main as convert_main
from vivit.errors import MissingError
from vivit.initialise import initial_params, model_config_from_checkpoint
from vivit.predict import main as predict_main
from vivit.recipes import base_config
from vivit.workdir import load_class_names

huggingface_hub = pytest.importorskip('huggingface_hub')

REPO = 'org/tiny-vivit'
MAIN, TAGGED = 'a' * 40, 'b' * 40  # the commits of refs/main and refs/v1
NAMES = ['archery', 'bowling', 'cooking', 'dancing', 'eating']
TAGGED_NAMES = ['v1_' + name for name in NAMES]


def add_snapshot(cache, repo, commit, source, refs=()):
  """Files of directory `source` as snapshot `commit` of model `repo` in the Hub cache
  `cache` (contents in blobs/, snapshots/ linking to them), pointed to by `refs`."""
  model = os.path.join(cache, 'models--' + repo.replace('/', '--'))
  snapshot = os.path.join(model, 'snapshots', commit)
  os.makedirs(os.path.join(model, 'blobs'), exist_ok=True)
  os.makedirs(os.path.join(model, 'refs'), exist_ok=True)
  os.makedirs(snapshot)
  for directory, _, names in os.walk(source):
    for name in names:
      data = open(os.path.join(directory, name), 'rb').read()
      blob = os.path.join(model, 'blobs', hashlib.sha256(data).hexdigest())
      with open(blob, 'wb') as f:
        f.write(data)
      link = os.path.join(snapshot, os.path.relpath(directory, source), name)
      os.makedirs(os.path.dirname(link), exist_ok=True)
      os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
  for ref in refs:
    with open(os.path.join(model, 'refs', ref), 'w') as f:
      f.write(commit)
  return snapshot


@pytest.fixture(scope='module')
def hub_cache(tmp_path_factory):
  """(HF_HOME, HF directory of the main commit): HF_HOME/hub holds REPO, refs/main at
  MAIN and refs/v1 at TAGGED (other class names)."""
  root = tmp_path_factory.mktemp('hub')
  config = tiny_model_config()
  params = random_params(config)
  to_transformers(config, params, str(root / 'main'), class_names=NAMES)
  to_transformers(config, params, str(root / 'tagged'), class_names=TAGGED_NAMES)
  cache = str(root / 'home' / 'hub')
  add_snapshot(cache, REPO, MAIN, str(root / 'main'), refs=['main'])
  add_snapshot(cache, REPO, TAGGED, str(root / 'tagged'), refs=['v1'])
  return str(root / 'home'), str(root / 'main')


@pytest.fixture
def offline(hub_cache, monkeypatch):
  """The Hub cache of `hub_cache`, offline. huggingface_hub reads its environment at
  import, so its constants are set too (`test_environment_is_honoured` sets only the
  environment, in a new process)."""
  home, _ = hub_cache
  for name, value in (('HF_HOME', home), ('HF_HUB_CACHE', os.path.join(home, 'hub')),
                      ('HF_HUB_OFFLINE', '1')):
    monkeypatch.setenv(name, value)
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', os.path.join(home, 'hub'))
  monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
  return os.path.join(home, 'hub', 'models--org--tiny-vivit', 'snapshots')


def test_what_is_an_id(tmp_path, monkeypatch):
  assert hub.hub_id('google/vivit-b-16x2-kinetics400') == (
      'google/vivit-b-16x2-kinetics400', None)
  assert hub.hub_id('org/name@v1.0') == ('org/name', 'v1.0')
  assert hub.hub_id('org/name@refs/pr/1') == ('org/name', 'refs/pr/1')
  for path in ('./name', '../org/name', '/abs/name', 'a/b/c', 'gs://bucket/name',
               'name', '~/name', 'org/name@', 'org/.name'):
    assert hub.hub_id(path) is None, path
    assert hub.resolve(path) == path


def test_convert_from_an_id(offline, hub_cache, tmp_path, capsys):
  _, local = hub_cache
  assert convert_main(['--from', 'transformers', '--src', REPO,
                       '--dst', str(tmp_path / 'ours')]) == 0
  config, params = load_params(str(tmp_path / 'ours'))
  _, expected, _ = read_checkpoint(local)
  assert config.num_classes == len(NAMES)
  np.testing.assert_array_equal(params['output_projection']['kernel'],
                                expected['output_projection']['kernel'])
  assert load_class_names(str(tmp_path / 'ours')) == NAMES
  # Converted and uploaded, as `vivit-evaluate --checkpoint` reads it.
  home, _ = hub_cache
  add_snapshot(os.path.join(home, 'hub'), 'org/converted', MAIN, str(tmp_path / 'ours'),
               refs=['main'])
  config, params = load_params(hub.resolve('org/converted'))
  np.testing.assert_array_equal(params['output_projection']['kernel'],
                                expected['output_projection']['kernel'])


def test_init_from_an_id(offline):
  init_from = base_config().init_from
  init_from.path = REPO
  model_config = base_config().model
  model_config.num_classes = 7
  config = model_config_from_checkpoint(init_from, model_config)
  assert (config.hidden_size, config.num_layers, config.num_classes) == (16, 2, 7)
  _, report = initial_params(init_from, config)
  assert report['Transformer/encoder_norm/scale'] == ('loaded', '')


def test_predict_from_an_id(offline, tmp_path, capsys):
  video = vf.write_video(str(tmp_path / 'clip.mp4'), 12, 25, (20, 24))
  assert predict_main(['--checkpoint', REPO, '--video', video, '--top', '2']) == 0
  assert all(line.split()[0] in NAMES
             for line in capsys.readouterr().out.strip().split('\n'))


def test_revision_picks_its_snapshot(offline):
  assert hub.resolve(REPO) == os.path.join(offline, MAIN)
  for revision in ('v1', TAGGED):
    assert hub.resolve(f'{REPO}@{revision}') == os.path.join(offline, TAGGED)
  assert read_checkpoint(f'{REPO}@v1')[2] == TAGGED_NAMES


def test_offline_without_a_copy_is_one_line(offline, tmp_path, capsys):
  for source in ('org/absent', f'{REPO}@v2'):
    assert convert_main(['--from', 'transformers', '--src', source,
                         '--dst', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f'error: {source} is not a local path') and '\n' not in err
    assert 'HF_HUB_OFFLINE' in err and 'run once online' in err
  init_from = base_config().init_from
  init_from.path = 'org/absent'
  with pytest.raises(MissingError, match='org/absent is not a local path'):
    model_config_from_checkpoint(init_from, base_config().model)


def test_local_directory_named_like_an_id_stays_a_path(offline, hub_cache, tmp_path,
                                                       monkeypatch):
  _, local = hub_cache
  shutil.copytree(local, tmp_path / 'org' / 'tiny-vivit')
  # The local copy's class names differ from the cached snapshot's.
  to_transformers(tiny_model_config(), random_params(tiny_model_config()),
                  str(tmp_path / 'org' / 'tiny-vivit'), class_names=TAGGED_NAMES[::-1])
  monkeypatch.chdir(tmp_path)
  assert hub.resolve(REPO) == REPO
  assert read_checkpoint(REPO)[2] == TAGGED_NAMES[::-1]


def test_without_huggingface_hub_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, 'huggingface_hub', None)  # import raises ImportError
  with pytest.raises(MissingError, match=r'pip install "vivit-jax\[hf\]"'):
    hub.resolve(REPO)


def test_environment_is_honoured(hub_cache, tmp_path):
  """HF_HOME and HF_HUB_OFFLINE reach huggingface_hub in a fresh process."""
  home, _ = hub_cache
  env = {k: v for k, v in os.environ.items() if not k.startswith('HF_')}
  env.update(HF_HOME=home, HF_HUB_OFFLINE='1',
             PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(__file__)),
                                         env.get('PYTHONPATH', '')]))
  script = 'import sys; from vivit.hub import resolve; print(resolve(sys.argv[1]))'
  out = subprocess.run([sys.executable, '-c', script, f'{REPO}@v1'], env=env,
                       capture_output=True, text=True, check=True).stdout.strip()
  assert out == os.path.join(home, 'hub', 'models--org--tiny-vivit', 'snapshots', TAGGED)
