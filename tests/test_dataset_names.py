"""Several custom datasets in one data dir (`vivit-prepare video_folder --name NAME`),
and a prepare into a dataset that other videos or annotations made: refused, unless
--rebuild."""
import json
import os
import shutil
import subprocess
import sys

import pytest

import video_files as vf
from vivit import datasets, prepare, task
from vivit.datasets.video_folder import VideoFolder
from vivit.datasets.builder import LOCK
from vivit.errors import ConfigError, DataError, MissingError
from vivit.input import pipeline
from vivit.recipes import base_config
from helpers import run_env

# name -> {split: [class of each video]}: three tiny videos each.
FOLDERS = {'birds': {'train': ['crow', 'owl'], 'validation': ['owl']},
           'fish': {'train': ['carp', 'eel', 'pike']}}


def write_tree(root, classes):
  for split, labels in classes.items():
    for i, label in enumerate(labels):
      vf.write_video(os.path.join(root, split, label, f'{i}.mp4'), 4, 25, (32, 48))
  return root


def prepare_args(name, videos, data_dir, *extra):
  return (['video_folder', '--videos', videos, '--data_dir', str(data_dir),
           '--short_side', '32'] + (['--name', name] if name else []) + list(extra))


def snapshot(directory):
  """{path: (size, mtime)} of every file under `directory` but the prepare locks (a
  run that is refused held one, and it names its last holder)."""
  return {os.path.relpath(os.path.join(d, n), directory):
          (os.stat(os.path.join(d, n)).st_size, os.stat(os.path.join(d, n)).st_mtime_ns)
          for d, _, names in os.walk(directory) for n in names if n != LOCK}


@pytest.fixture(scope='module')
def named(tmp_path_factory):
  """`birds` and `fish` prepared into one data dir: (root, data_dir)."""
  root = tmp_path_factory.mktemp('named')
  for name, classes in FOLDERS.items():
    write_tree(str(root / name), classes)
    assert prepare.main(prepare_args(name, str(root / name), root / 'tfds')) == 0
  return root, root / 'tfds'


def read(name, data_dir, split):
  """(class names, sorted [class name of each example]) through the input pipeline's
  source."""
  config = base_config().dataset
  config.name, config.data_dir = name, str(data_dir)
  source = pipeline.open_source(config, split)
  names, = source.class_names(None)
  stream = source.eval_stream(source.num_examples)
  labels = [names[int(source.parse(serialized)[1])]
            for _, serialized in stream.dataset.as_numpy_iterator()]
  assert task.prepared_fps(config) == 25.0
  return list(names), sorted(labels)


def test_named_datasets_share_a_data_dir(named):
  _, data_dir = named
  for name, classes in FOLDERS.items():
    for split, labels in classes.items():
      names, read_labels = read(f'video_folder/{name}', data_dir, split)
      assert names == sorted(set(FOLDERS[name]['train']))
      assert read_labels == sorted(labels)
    assert os.path.exists(data_dir / 'video_folder' / name / 'prepare_report.json')
  with pytest.raises(MissingError, match='dataset video_folder/cats is not prepared'):
    datasets.get_builder('video_folder/cats', str(data_dir))
  with pytest.raises(ConfigError, match=r"dataset video_folder/a\.b: 'a\.b' is not a "
                                        r'dataset name'):
    datasets.get_builder('video_folder/a.b', str(data_dir))
  with pytest.raises(ConfigError, match='kinetics400 has no named datasets'):
    datasets.get_builder('kinetics400/birds', str(data_dir))


@pytest.mark.parametrize('argv, message', [
    (['--name', 'two words'], "argument --name: 'two words' is not a dataset name"),
    (['--name', '_prepare'], "argument --name: '_prepare' is not a dataset name"),
    (['--name', 'a\nb'], r"argument --name: 'a\nb' is not a dataset name"),
])
def test_a_name_is_letters_digits_underscore_and_dash(tmp_path, capsys, argv, message):
  assert prepare.main(prepare_args(None, str(tmp_path), tmp_path / 'tfds', *argv)) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'error: {message}') and err.count('\n') == 1, err
  assert not os.path.exists(tmp_path / 'tfds')


def test_a_release_takes_no_name(tmp_path, capsys):
  argv = ['kinetics400', '--name', 'mine', '--videos', str(tmp_path), '--annotations',
          str(tmp_path), '--data_dir', str(tmp_path / 'tfds')]
  assert prepare.main(argv) == 2
  err = capsys.readouterr().err
  assert err == ('error: --name is for video_folder; kinetics400 is one dataset, prepared '
                 'once per --data_dir\n')


def test_other_sources_are_refused_until_rebuild(named, tmp_path, capsys):
  """The issue's case: a data dir holding one folder's video_folder and a second
  prepare from another folder. Named datasets beside it stay as they are."""
  root, fixture_dir = named
  data_dir = tmp_path / 'tfds'
  shutil.copytree(fixture_dir, data_dir)
  first, other = str(root / 'birds'), str(root / 'fish')
  assert prepare.main(prepare_args(None, first, data_dir)) == 0
  before = snapshot(data_dir)
  result = subprocess.run([sys.executable, '-m', 'vivit.prepare']
                          + prepare_args(None, other, data_dir), env=run_env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and result.stdout == '', result.stderr[-3000:]
  assert result.stderr == (
      f'error: {data_dir}/video_folder holds video_folder (train 2, validation 1 examples) '
      f'from --videos {os.path.realpath(first)} (sha256:'
      f'{VideoFolder.fingerprint(first, None)[7:19]}), not from --videos '
      f'{os.path.realpath(other)} (sha256:{VideoFolder.fingerprint(other, None)[7:19]}): '
      f'prepare it under another --name or --data_dir, or add --rebuild to delete it and '
      f'prepare it from these\n')
  assert snapshot(data_dir) == before
  capsys.readouterr()
  # The same sources: nothing to do.
  assert prepare.main(prepare_args(None, first, data_dir)) == 0
  out, err = capsys.readouterr()
  assert 'video_folder is already prepared' in out and 'nothing to do' in out and not err
  # A named one from another folder is refused the same way.
  assert prepare.main(prepare_args('birds', other, data_dir)) == 2
  assert 'holds video_folder/birds (train 2, validation 1 examples) from --videos' in (
      capsys.readouterr().err)
  assert snapshot(data_dir) == before
  # --rebuild replaces the plain one only.
  assert prepare.main(prepare_args(None, other, data_dir, '--rebuild')) == 0
  out = capsys.readouterr().out
  assert f'deleted video_folder (train 2, validation 1 examples) in {data_dir}/video_folder' in out
  assert read('video_folder', data_dir, 'train') == (['carp', 'eel', 'pike'],
                                                     ['carp', 'eel', 'pike'])
  after = snapshot(data_dir)
  for name in FOLDERS:
    assert {p: s for p, s in after.items() if p.startswith(f'video_folder/{name}/')} == {
        p: s for p, s in before.items() if p.startswith(f'video_folder/{name}/')}
  assert read('video_folder/birds', data_dir, 'validation') == (['crow', 'owl'], ['owl'])


def test_an_unfinished_run_from_other_sources_is_refused(named, tmp_path):
  root, _ = named
  data_dir = str(tmp_path / 'tfds')
  # What a run killed after it decoded one video leaves.
  half = VideoFolder(data_dir=data_dir, config='half', videos=str(root / 'birds'))
  half.record_sources()
  open(os.path.join(half.work_dir, 'a.npz'), 'wb').close()
  with pytest.raises(DataError, match=r'tfds/video_folder/half holds an unfinished '
                                      r'preparation of video_folder/half \(1 video '
                                      r'decoded\) from --videos .*birds .* --rebuild'):
    prepare.prepare(prepare.parse_args(prepare_args('half', str(root / 'fish'), data_dir)))
  # One that decoded nothing holds nothing worth keeping: it is replaced.
  os.remove(os.path.join(half.work_dir, 'a.npz'))
  assert prepare.main(prepare_args('half', str(root / 'fish'), data_dir)) == 0


def test_a_dataset_without_recorded_sources_is_taken_with_a_warning(named, tmp_path,
                                                                     capsys):
  """One prepared before prepare recorded its sources."""
  root, fixture_dir = named
  data_dir = tmp_path / 'tfds'
  shutil.copytree(fixture_dir / 'video_folder' / 'fish', data_dir / 'video_folder' / 'fish')
  metadata = data_dir / 'video_folder' / 'fish' / '1.0.0' / 'metadata.json'
  stored = json.loads(metadata.read_text())
  del stored['sources']
  metadata.write_text(json.dumps(stored))
  assert prepare.main(prepare_args('fish', str(root / 'birds'), data_dir)) == 0
  out, err = capsys.readouterr()
  assert 'video_folder/fish is already prepared' in out and 'nothing to do' in out
  assert err.startswith(f'warning: {data_dir}/video_folder/fish holds video_folder/fish '
                        f'(train 3 examples) whose sources are not recorded (made before '
                        f'prepare recorded them): taken to be from --videos ')
  assert '--rebuild deletes it and prepares it from them' in err and err.count('\n') == 1
