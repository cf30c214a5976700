"""`vivit-prepare` runs that a user's machine makes hard: killed as a whole again and
again, two at once on one dataset, and splits left with nothing to write."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import tensorflow_datasets as tfds

import video_files as vf
from vivit import prepare
from vivit.datasets.builder import preparing
from vivit.datasets.work_files import FAILED
from helpers import run_env


def prepare_command(videos, data_dir, *extra):
  return [sys.executable, '-m', 'vivit.prepare', 'video_folder', '--videos', str(videos),
          '--data_dir', str(data_dir), '--short_side', '32', *extra]


def stored(data_dir):
  """{split: {id: (JPEG bytes of every frame, label, fps)}} as TFDS stored them."""
  builder = tfds.builder('video_folder', data_dir=str(data_dir))
  splits = {}
  for split in builder.info.splits:
    raw = builder.as_data_source(split,
                                 deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    examples = {}
    for serialized in raw:
      example = builder.info.features.deserialize_example(
          serialized, decoders={'video': tfds.decode.SkipDecoding()})
      examples[example['id'].numpy().decode()] = (
          tuple(example['video'].numpy()), int(example['label']), float(example['fps']))
    splits[split] = examples
  return splits


def write_tree(root, count, frames, size):
  """A video_folder tree of `count` videos, train and validation."""
  for i in range(count):
    split = 'validation' if i % 4 == 3 else 'train'
    vf.write_video(os.path.join(root, split, f'class{i % 2}', f'v{i}.mp4'), frames, 25, size)
  return root


def report_of(data_dir):
  with open(os.path.join(data_dir, 'video_folder', 'prepare_report.json')) as f:
    return json.load(f)


def start(command, err):
  """`command` started in a session of its own (so that its whole process group can
  be killed), once it has said how many clips it prepares: it is about to decode."""
  with open(err, 'w') as f:
    process = subprocess.Popen(command, env=run_env(), stdout=subprocess.PIPE, stderr=f,
                               text=True, start_new_session=True)
  process.stdout.readline()
  return process


@pytest.mark.slow
def test_killed_again_and_again_ends_with_an_uninterrupted_runs_dataset(tmp_path):
  """Eight SIGKILLs of the whole process group at seeded random times (while decoding,
  writing, reporting), then a run to the end: every example's bytes are an
  uninterrupted run's, and no video was failed for the kills."""
  videos = write_tree(str(tmp_path / 'videos'), 12, 250, (480, 640))
  process = start(prepare_command(videos, tmp_path / 'straight', '--workers', '2'),
                  tmp_path / 'err_straight')
  started = time.time()
  assert process.wait(timeout=600) == 0, (tmp_path / 'err_straight').read_text()[-3000:]
  rest = time.time() - started  # from the clip count to the end
  reference = stored(tmp_path / 'straight')
  killed = tmp_path / 'killed'
  work = killed / 'video_folder' / '_prepare'
  rng = random.Random(30)
  for attempt in range(8):
    process = start(prepare_command(videos, killed, '--workers', '2'),
                    tmp_path / f'err{attempt}')
    time.sleep(rng.uniform(0, rest * 0.8))
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    process.stdout.close()
    failed = [os.path.join(d, n) for d, _, names in os.walk(work) for n in names
              if n.endswith(FAILED)]
    assert not failed, (attempt, failed)
  result = subprocess.run(prepare_command(videos, killed, '--workers', '2'), env=run_env(),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert stored(killed) == reference
  assert sum(len(examples) for examples in reference.values()) == 12
  assert report_of(killed)['skipped'] == []


def test_two_prepares_at_once_make_one_dataset(tmp_path):
  """Two runs started while a third holds the dataset's lock (this test): each says
  once whom it waits for; then one prepares, the other waits for it and finds the
  dataset prepared. Both end with status 0, no traceback; the dataset is a single
  run's."""
  videos = write_tree(str(tmp_path / 'videos'), 4, 8, (48, 64))
  data_dir = tmp_path / 'tfds'
  errs = [tmp_path / 'err0', tmp_path / 'err1']
  with preparing(str(data_dir / 'video_folder'), 'video_folder'):
    processes = []
    for err in errs:
      with open(err, 'w') as f:
        processes.append(subprocess.Popen(prepare_command(videos, data_dir), env=run_env(),
                                          stdout=subprocess.PIPE, stderr=f, text=True))
    vf.run_prepare('video_folder', videos, None, tmp_path / 'single')  # while they start
    deadline = time.time() + 120
    while time.time() < deadline and not all('waiting' in e.read_text() for e in errs):
      assert all(p.poll() is None for p in processes), [e.read_text() for e in errs]
      time.sleep(0.1)
  outs = [p.communicate(timeout=300)[0] for p in processes]
  for process, err in zip(processes, errs):
    assert process.returncode == 0 and 'Traceback' not in err.read_text(), err.read_text()
    assert (f'video_folder: waiting for the run that is preparing it (pid {os.getpid()} on '
            in err.read_text().splitlines()[0])
  assert sorted('nothing to do' in out for out in outs) == [False, True], outs
  assert stored(data_dir) == stored(tmp_path / 'single')


def test_a_split_whose_every_video_fails_is_one_error_after_the_report(tmp_path):
  videos = str(tmp_path / 'clips')
  vf.write_video(os.path.join(videos, 'a.mp4'), 4, 25, (48, 64))
  vf.write_bad(os.path.join(videos, 'bad.mp4'), 'corrupt')
  vf.write_bad(os.path.join(videos, 'empty.mp4'), 'empty')
  listing = vf.write_csv(str(tmp_path / 'list.csv'), None, [
      ['a.mp4', 'jump', 'train'], ['bad.mp4', 'run', 'validation'],
      ['empty.mp4', 'jump', 'validation']])
  data_dir = tmp_path / 'tfds'
  result = subprocess.run(prepare_command(videos, data_dir, '--annotations', listing),
                          env=run_env(), capture_output=True, text=True, timeout=300)
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  report = data_dir / 'video_folder' / 'prepare_report.json'
  assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
  assert [line for line in lines if line.startswith('error:')] == [lines[-1]]
  assert lines[-1] == (f'error: video_folder: split validation: every video failed, so '
                       f'there is nothing to write; see the reasons in {report}')
  written = report_of(data_dir)
  assert sorted(s['id'] for s in written['skipped']) == ['bad.mp4', 'empty.mp4']
  assert written['empty_splits'] == ['validation']


def test_a_split_without_a_video_or_a_clip_twice_is_refused_before_decoding(tmp_path,
                                                                            capsys):
  videos = str(tmp_path / 'clips')
  vf.write_video(os.path.join(videos, 'a.mp4'), 4, 25, (48, 64))
  data_dir = tmp_path / 'tfds'
  argv = ['video_folder', '--videos', videos, '--data_dir', str(data_dir)]
  listing = vf.write_csv(str(tmp_path / 'list.csv'), None, [
      ['a.mp4', 'jump', 'train'], ['gone.mp4', 'run', 'validation'],
      ['gone2.mp4', 'run', 'validation']])
  assert prepare.main(argv + ['--annotations', listing]) == 2
  report = data_dir / 'video_folder' / 'prepare_report.json'
  assert capsys.readouterr().err == (
      f'error: video_folder: split validation: none of its videos was found, so there is '
      f'nothing to write; see the reasons in {report}\n')
  assert [(s['id'], s['reason']) for s in report_of(data_dir)['skipped']] == [
      ('gone.mp4', 'video file not found'), ('gone2.mp4', 'video file not found')]
  work = data_dir / 'video_folder' / '_prepare'
  assert not [n for _, _, names in os.walk(work) for n in names if n.endswith('.npz')]
  listing = vf.write_csv(str(tmp_path / 'list.csv'), None, [
      ['a.mp4', 'jump', 'train'], ['a.mp4', 'run', 'train']])
  assert prepare.main(argv + ['--annotations', listing]) == 2
  assert capsys.readouterr().err == (
      f"error: {listing}:2: clip 'a.mp4' of split train is listed again, differently "
      f"(first at {listing}:1)\n")


@pytest.mark.slow
def test_with_beam_a_split_whose_every_video_fails_is_one_error_after_the_report(tmp_path,
                                                                                 capsys):
  """Beam decodes as it writes: the split is found empty only then (Beam's own logger
  may print its error before the line)."""
  pytest.importorskip('apache_beam')  # the beam extra
  videos = str(tmp_path / 'clips')
  vf.write_video(os.path.join(videos, 'a.mp4'), 4, 25, (48, 64))
  vf.write_bad(os.path.join(videos, 'bad.mp4'), 'corrupt')
  listing = vf.write_csv(str(tmp_path / 'list.csv'), None, [
      ['a.mp4', 'jump', 'train'], ['bad.mp4', 'run', 'validation']])
  data_dir = tmp_path / 'tfds'
  assert prepare.main(['video_folder', '--videos', videos, '--annotations', listing,
                       '--data_dir', str(data_dir), '--beam',
                       '--beam_options=--runner=DirectRunner']) == 2
  report = data_dir / 'video_folder' / 'prepare_report.json'
  assert capsys.readouterr().err.splitlines()[-1] == (
      f'error: video_folder: split validation: every video failed, so there is nothing to '
      f'write; see the reasons in {report}')
  assert [s['id'] for s in report_of(data_dir)['skipped']] == ['bad.mp4']
