"""Preparing real datasets from their official file formats, then training on them.

Every release here is written in its official layout with small real videos (H.264
mp4 and VP9 webm, odd sizes, portrait and landscape, 25 and 29.97 fps, some shorter
than a clip, some broken)."""
import contextlib
import io
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import video_files as vf
from vivit import evaluate
from vivit.datasets import releases as builders
from vivit.datasets.decoders import KILL_WORKER_ON
from vivit.datasets.entries import Entry
from vivit.datasets.work_files import DECODED, RUNNING, work_file
from vivit.input import dmvr, pipeline
from vivit.errors import AnnotationError, DataError
from vivit.train import train_and_evaluate
from helpers import ROOT, default_or_slow, tiny_run_config

KINETICS_CLASSES = ['air drumming', 'passing American football (in game)',
                    "tying bow tie"]
# (youtube id, start, class, fps, frames, (height, width)); the first two are
# shorter than a 4-frame x stride-2 clip.
KINETICS_TRAIN = [
    ('-3B32lodo2M', 0, 0, 25, 6, (48, 64)),
    ('_dbcJuKJQNs', 40, 1, vf.NTSC, 5, (64, 48)),
    ('abc123xyz00', 12, 2, 25, 16, (45, 81)),
    ('def456uvw11', 3, 0, vf.NTSC, 20, (50, 50)),
    ('ghi789rst22', 100, 1, 25, 14, (64, 36)),
    ('jkl012opq33', 7, 2, vf.NTSC, 16, (48, 64)),
    ('mno345lmn44', 0, 0, 25, 12, (48, 64)),
    ('pqr678ijk55', 5, 1, 25, 12, (64, 48)),
    ('stu901fgh66', 9, 2, vf.NTSC, 14, (48, 64)),
]
KINETICS_VALIDATION = [
    ('vwx234cde77', 1, 0, 25, 12, (48, 64)),
    ('yza567bcd88', 2, 1, vf.NTSC, 15, (64, 48)),
    ('bcd890abc99', 3, 2, 25, 10, (48, 64)),
]
# youtube id -> what is wrong with its file (all listed in train.csv)
KINETICS_BAD = {'corruptvid00': 'corrupt', 'emptyvideo00': 'empty',
                'truncated000': 'truncated', 'truncwebm000': 'truncated_webm',
                'audioonly000': 'audio', 'missingvid00': 'missing'}
# A whole "YouTube video" saved as `<youtube_id>.mp4` (12 s): its clip is 1 s..11 s.
KINETICS_FULL_VIDEO = ('wholevideo0', 1, 2, 25, 300, (48, 64))


def expected_frames(num_frames, fps, target=25.0):
  """Source frame indices kept when resampling to `target` fps by nearest time."""
  duration = num_frames / float(fps)
  count = int(np.floor(duration * target + 1e-6))
  return [min(int(round(k / target * float(fps))), num_frames - 1) for k in range(count)]


def write_kinetics(root):
  """Kinetics-400 as the 2017 release: per-split CSVs (validate.csv with quoted
  labels, a test.csv without labels), clips under per-class folders, one flat
  `<youtube_id>.mp4`."""
  videos, annotations = os.path.join(root, 'videos'), os.path.join(root, 'annotations')
  rows = {'train': [], 'validate': []}
  for split, clips in (('train', KINETICS_TRAIN), ('validate', KINETICS_VALIDATION)):
    for i, (yid, start, label, fps, frames, size) in enumerate(clips):
      name = f'{yid}_{start:06d}_{start + 10:06d}.mp4'
      folder = os.path.join(videos, split, KINETICS_CLASSES[label])
      path = os.path.join(folder, name) if i != 2 else os.path.join(videos, yid + '.mp4')
      vf.write_video(path, frames, fps, size)
      rows[split].append([KINETICS_CLASSES[label], yid, start, start + 10,
                          'val' if split == 'validate' else split, 0])
  yid, start, label, fps, frames, size = KINETICS_FULL_VIDEO
  vf.write_video(os.path.join(videos, yid + '.mp4'), frames, fps, size)
  rows['train'].append([KINETICS_CLASSES[label], yid, start, start + 10, 'train', 0])
  for yid, kind in KINETICS_BAD.items():
    rows['train'].append([KINETICS_CLASSES[0], yid, 0, 10, 'train', 0])
    extension = '.webm' if kind == 'truncated_webm' else '.mp4'
    path = os.path.join(videos, 'train', KINETICS_CLASSES[0], f'{yid}_000000_000010{extension}')
    if kind == 'audio':
      vf.write_audio_only(path)
    elif kind != 'missing':
      vf.write_bad(path, kind)
  header = ['label', 'youtube_id', 'time_start', 'time_end', 'split', 'is_cc']
  vf.write_csv(os.path.join(annotations, 'train.csv'), header, rows['train'])
  vf.write_csv(os.path.join(annotations, 'validate.csv'), header, rows['validate'],
               quote_all=True)
  vf.write_csv(os.path.join(annotations, 'test.csv'),
               ['youtube_id', 'time_start', 'time_end', 'split'], [['zzz', 0, 10, 'test']])
  return videos, annotations


def load(dataset, data_dir):
  """{id: example} of every split, frames decoded, from plain TFDS."""
  builder = tfds.builder(dataset, data_dir=str(data_dir))
  examples = {}
  for split in builder.info.splits:
    for example in builder.as_data_source(split):
      example = dict(example, split=split, video=np.stack(example['video']))
      examples[example['id'].decode()] = example
  return builder, examples


def levels(video):
  return [vf.level_index(frame.mean()) for frame in video]


@pytest.fixture(scope='module')
def kinetics(tmp_path_factory):
  root = tmp_path_factory.mktemp('kinetics')
  videos, annotations = write_kinetics(str(root))
  data_dir = root / 'tfds'
  report = vf.run_prepare('kinetics400', videos, annotations, data_dir)
  return videos, annotations, data_dir, report


def test_kinetics_labels_counts_frames_fps_and_report(kinetics):
  _, _, data_dir, report = kinetics
  builder, examples = load('kinetics400', data_dir)
  assert builder.info.features['label'].names == sorted(KINETICS_CLASSES)
  assert set(builder.info.splits) == {'train', 'validation'}  # test.csv has no labels
  assert builder.info.splits['train'].num_examples == len(KINETICS_TRAIN) + 1
  assert builder.info.splits['validation'].num_examples == len(KINETICS_VALIDATION)
  names = builder.info.features['label'].names
  for split, clips in (('train', KINETICS_TRAIN), ('validation', KINETICS_VALIDATION)):
    for yid, start, label, fps, frames, (height, width) in clips:
      example = examples[f'{yid}_{start:06d}_{start + 10:06d}']
      assert example['split'] == split
      assert names[example['label']] == KINETICS_CLASSES[label]
      assert example['fps'] == 25.0
      video = example['video']
      short = 32
      scale = short / min(height, width)
      assert video.shape == (len(expected_frames(frames, fps)), round(height * scale),
                             round(width * scale), 3)
      assert levels(video) == [i % vf.CYCLE for i in expected_frames(frames, fps)]
  whole = examples['wholevideo0_000001_000011']['video']
  assert levels(whole) == [i % vf.CYCLE for i in range(25, 275)]  # cut at 1 s..11 s
  skipped = {s['id'].split('_')[0]: s['reason'] for s in report['skipped']}
  assert set(skipped) == set(KINETICS_BAD)
  assert skipped['emptyvideo00'] == 'empty file (0 bytes)'
  assert skipped['audioonly000'].startswith('no video stream')
  assert skipped['missingvid00'] == 'video file not found'
  assert skipped['corruptvid00'].startswith('cannot open')
  assert skipped['truncated000'].startswith('cannot open')
  assert skipped['truncwebm000'].startswith('truncated: frames end at 0.92s of 2.40s')
  with open(os.path.join(data_dir, 'kinetics400', 'prepare_report.json')) as f:
    assert '"corruptvid00_000000_000010"' in f.read()
  assert not os.path.exists(os.path.join(data_dir, 'kinetics400', '_prepare'))


def test_prepare_twice_is_a_no_op(kinetics, capsys):
  videos, annotations, data_dir, _ = kinetics
  version_dir = os.path.join(data_dir, 'kinetics400', '1.0.0')
  before = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns
            for f in os.listdir(version_dir)}
  assert vf.run_prepare('kinetics400', videos, annotations, data_dir) == {}
  assert 'already prepared' in capsys.readouterr().out
  assert {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns
          for f in os.listdir(version_dir)} == before
  with pytest.raises(ValueError, match='prepared with fps=25, short_side=32'):
    vf.run_prepare('kinetics400', videos, annotations, data_dir, '--fps', '30')


def test_a_run_stopped_after_writing_only_finishes_the_report(kinetics, tmp_path):
  videos, annotations, data_dir, report = kinetics
  out = tmp_path / 'out'
  vf.run_prepare('kinetics400', videos, annotations, out, '--keep_work')
  work = out / 'kinetics400' / '_prepare'
  assert work.is_dir()
  os.remove(out / 'kinetics400' / 'prepare_report.json')  # as if killed before it
  version_dir = out / 'kinetics400' / '1.0.0'
  before = {f: os.stat(version_dir / f).st_mtime_ns for f in os.listdir(version_dir)}
  again = vf.run_prepare('kinetics400', videos, annotations, out)
  assert again['skipped'] == report['skipped'] and again['examples'] == report['examples']
  assert not work.exists()
  assert {f: os.stat(version_dir / f).st_mtime_ns for f in os.listdir(version_dir)} == before


def test_segments_and_timestamps_in_every_container(tmp_path):
  """Whole files and [start, stop) segments give the frames of those times, also
  from MPEG-TS (bad seeking) and raw H.264 (no timestamps at all)."""
  from vivit import video
  resample = video.Resample(fps=25, short_side=32)
  for name, codec, container in (('a.mp4', 'libx264', None), ('a.ts', 'libx264', 'mpegts'),
                                 ('a.h264', 'libx264', 'h264'),
                                 ('a.webm', 'libvpx-vp9', None)):
    path = vf.write_video(str(tmp_path / name), 40, 25, (48, 64), codec, container)
    for start, stop, expected in ((None, None, range(40)), (0.4, 0.8, range(10, 20)),
                                  (1.0, 1.2, range(25, 30))):
      clip = video.read_video(path, resample, start=start, stop=stop)
      frames = [np.asarray(Image.open(io.BytesIO(jpeg))) for jpeg in clip.frames]
      assert levels(frames) == [i % vf.CYCLE for i in expected], (name, start)


def test_workers_and_beam_give_the_same_examples(kinetics, tmp_path):
  pytest.importorskip('apache_beam')  # the beam extra (the floors' check runs without it)
  videos, annotations, data_dir, _ = kinetics
  _, reference = load('kinetics400', data_dir)
  vf.run_prepare('kinetics400', videos, annotations, tmp_path / 'workers', '--workers', '2')
  _, with_workers = load('kinetics400', tmp_path / 'workers')
  report = vf.run_prepare('kinetics400', videos, annotations, tmp_path / 'beam', '--beam',
                       '--beam_options', '--runner=DirectRunner --direct_num_workers=2 '
                       '--direct_running_mode=multi_processing')
  _, with_beam = load('kinetics400', tmp_path / 'beam')
  assert len(report['skipped']) == len(KINETICS_BAD)
  for other in (with_workers, with_beam):
    assert sorted(other) == sorted(reference)
    for key, example in reference.items():
      np.testing.assert_array_equal(other[key]['video'], example['video'])
      assert (other[key]['label'], other[key]['split']) == (example['label'],
                                                            example['split'])


def decoded(work_dir):
  """Videos with a finished work file (not counting one being written)."""
  return sum(f.endswith('.npz') for _, _, files in os.walk(work_dir) for f in files)


def prepare_command(videos, data_dir):
  return [sys.executable, '-m', 'vivit.prepare', 'video_folder', '--videos', videos,
          '--data_dir', str(data_dir), '--short_side', '32']


def test_sigkill_midway_then_restart_completes_the_same_dataset(tmp_path):
  # Videos long enough that decoding them all takes about a second.
  videos = str(tmp_path / 'videos')
  for i in range(24):
    vf.write_video(os.path.join(videos, 'train', f'class{i % 2}', f'v{i}.mp4'), 120, 25,
                   (96, 128))
  env = dict(os.environ, PYTHONPATH=ROOT)
  subprocess.run(prepare_command(videos, tmp_path / 'straight'), env=env, check=True,
                 capture_output=True, timeout=300)
  _, reference = load('video_folder', tmp_path / 'straight')
  process = subprocess.Popen(prepare_command(videos, tmp_path / 'killed'), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  work = tmp_path / 'killed' / 'video_folder' / '_prepare' / 'train'
  deadline = time.time() + 120
  while time.time() < deadline and process.poll() is None:
    if work.exists() and decoded(work) >= 1:
      break
    time.sleep(0.005)
  assert process.poll() is None, 'prepare finished before it could be killed'
  process.send_signal(signal.SIGKILL)
  process.wait()
  decoded_before = decoded(work)
  assert 0 < decoded_before < 24
  result = subprocess.run(prepare_command(videos, tmp_path / 'killed'), env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'{decoded_before} of 24 videos were decoded by an earlier run' in result.stderr
  _, resumed = load('video_folder', tmp_path / 'killed')
  assert sorted(resumed) == sorted(reference) and len(reference) == 24
  for key, example in reference.items():
    np.testing.assert_array_equal(resumed[key]['video'], example['video'])


class Trap:
  """Unpickling this makes a directory: a work file that holds it must not be loaded."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return os.mkdir, (self.path,)


@pytest.fixture(scope='module')
def died(tmp_path_factory):
  """video_folder prepared with 2 workers (work files kept) where d.mp4 kills its
  worker (SIGKILL, as the OOM killer does), after runs killed as a whole left: a
  marker of b.mp4, decoded alone then (an older version's marker); one of c.mp4,
  decoded with others; one of e.mp4, in flight at a second kill; a pickle as a.mp4's
  work file; a stale partial file. Returns (root, work dir, report, stderr)."""
  root = tmp_path_factory.mktemp('died')
  videos = str(root / 'clips')
  for name in 'abcde':
    vf.write_video(os.path.join(videos, f'{name}.mp4'), 8, 25, (48, 64))
  listing = vf.write_csv(str(root / 'list.csv'), None,
                         [[f'{name}.mp4', 'jump', 'train'] for name in 'abcde'])
  work = str(root / 'tfds' / 'video_folder' / '_prepare')
  path = lambda name, suffix: work_file(work, Entry(f'{name}.mp4', 'train', (), None), suffix)
  vf.write_json(path('b', RUNNING), {'pid': 1, 'alone': True})
  vf.write_json(path('c', RUNNING), {'pid': 1, 'alone': False})
  vf.write_json(path('e', RUNNING), {'pid': 1, 'kills': 1})
  for where, data in ((path('a', DECODED), pickle.dumps(Trap(str(root / 'trap')))),
                      (path('e', DECODED) + '.123.partial', b'half')):
    os.makedirs(os.path.dirname(where), exist_ok=True)
    with open(where, 'wb') as f:
      f.write(data)
  with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(io.StringIO()) as err:
    patch.setenv(KILL_WORKER_ON, 'd.mp4')
    report = vf.run_prepare('video_folder', videos, listing, root / 'tfds', '--workers', '2',
                            '--keep_work')
  return root, work, report, err.getvalue()


def test_a_video_that_kills_its_worker_is_named_and_the_rest_finished(died):
  root, _, report, _ = died
  skipped = {s['id']: s['reason'] for s in report['skipped']}
  assert skipped == {'d.mp4': 'worker died: signal 9 (SIGKILL, out of memory?)'}
  _, examples = load('video_folder', root / 'tfds')
  assert sorted(examples) == ['a.mp4', 'b.mp4', 'c.mp4', 'e.mp4']
  assert all(len(e['video']) == 8 for e in examples.values())


def test_videos_in_flight_when_prepare_was_killed_are_decoded_again(died):
  """A whole run killed fails no video: b.mp4 (decoded alone then), c.mp4 and e.mp4
  are decoded again; e.mp4, in flight at two kills, is named as a possible cause."""
  root, work, report, err = died
  assert [s['id'] for s in report['skipped']] == ['d.mp4']
  assert ('decoding the other 5, last and one at a time the 3 it was decoding when it '
          'was killed') in err
  notes = [line for line in err.splitlines() if line.startswith('note:')]
  assert notes == ['note: video_folder: prepare was killed several times while decoding '
                   f'e.mp4 ({root}/list.csv:5, '
                   '2 kills); if a video kills it (out of memory?), leave it out of the '
                   'annotations']
  left = [f for _, _, files in os.walk(work) for f in files]
  assert not [f for f in left if f.endswith(RUNNING)]


def test_work_files_are_npz_and_stale_or_pickled_ones_go(died):
  root, work, _, _ = died
  assert not os.path.exists(root / 'trap')  # the pickle was never loaded
  files = [os.path.join(d, f) for d, _, names in os.walk(work) for f in names]
  assert not [f for f in files if f.endswith('.partial')]
  npz = [f for f in files if f.endswith('.npz')]
  assert len(npz) == 4
  for path in npz:
    with np.load(path, allow_pickle=False) as data:
      assert data['offsets'][-1] == len(data['jpeg']) and data['fps'] == 25


def test_video_folder_split_names_cannot_leave_the_data_dir(tmp_path):
  videos = str(tmp_path / 'clips')
  vf.write_video(os.path.join(videos, 'a.mp4'), 4, 25, (48, 64))
  tree = lambda: {os.path.join(d, n) for d, dirs, files in os.walk(tmp_path)
                  for n in dirs + files}
  before = tree()
  for line, split in ((2, '../x'), (1, '../../../x'), (2, str(tmp_path / 'abs'))):
    rows = [['a.mp4', 'run', 'train']] * (line - 1) + [['a.mp4', 'run', split]]
    listing = vf.write_csv(str(tmp_path / 'list.csv'), None, rows)
    with pytest.raises(AnnotationError, match=rf"list.csv:{line}: split '{re.escape(split)}' "
                                              r'is not a name of letters'):
      vf.run_prepare('video_folder', videos, listing, tmp_path / 'tfds')
  outside = tree() - before - {listing}
  assert not [p for p in outside if not p.startswith(str(tmp_path / 'tfds'))]
  vf.write_video(os.path.join(tmp_path, 'tree', 'my split', 'cat', 'a.mp4'), 4, 25, (48, 64))
  with pytest.raises(AnnotationError, match=r"tree/my split: split 'my split' is not"):
    vf.run_prepare('video_folder', str(tmp_path / 'tree'), None, tmp_path / 'tfds')


def test_a_work_dir_linked_elsewhere_is_not_written(tmp_path):
  videos = str(tmp_path / 'clips')
  vf.write_video(os.path.join(videos, 'a.mp4'), 4, 25, (48, 64))
  listing = vf.write_csv(str(tmp_path / 'list.csv'), None, [['a.mp4', 'run', 'train']])
  work = tmp_path / 'tfds' / 'video_folder' / '_prepare'
  os.makedirs(work)
  os.makedirs(tmp_path / 'elsewhere')
  os.symlink(tmp_path / 'elsewhere', work / 'train')
  with pytest.raises(DataError, match='outside the work directory'):
    vf.run_prepare('video_folder', videos, listing, tmp_path / 'tfds')
  assert os.listdir(tmp_path / 'elsewhere') == []


def train_and_test(data_dir, name, tmp_path, **extra):
  """A few training steps on a prepared dataset, then the multi-view evaluation."""
  config = tiny_run_config(str(data_dir), **{'dataset.name': name, 'training.num_steps': 3,
                                          'training.batch_size': 4, 'eval.batch_size': 4,
                                          'training.eval_every': 3, **extra})
  label_key = config.dataset.label_key
  config.model.num_classes = None  # the dataset's
  workdir = str(tmp_path / f'run_{name}')
  os.makedirs(workdir, exist_ok=True)
  trained = train_and_evaluate(config, workdir)
  assert trained['step'] == 3
  result = evaluate.run(config, workdir, split=config.dataset.eval_split)
  assert result['views'] == 2
  if len(label_key) == 1:
    assert len(result['per_class_accuracy']) == config.model.num_classes
  else:
    assert set(result['heads']) == set(label_key)
    assert config.model.num_classes == sum(len(m['per_class_accuracy'])
                                           for m in result['heads'].values())
  return result


def test_train_and_evaluate_on_prepared_kinetics(kinetics, tmp_path):
  result = train_and_test(kinetics[2], 'kinetics400', tmp_path)
  assert result['num_videos'] == len(KINETICS_VALIDATION)
  assert result['class_names'] == sorted(KINETICS_CLASSES)


def scenic_sequence_examples(data_dir):
  """The prepared kinetics400 validation split as serialized scenic (DMVR)
  SequenceExamples: JPEG frames and the label."""
  builder = tfds.builder('kinetics400', data_dir=str(data_dir))
  raw = builder.as_data_source('validation',
                               deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  records = []
  for serialized in raw:
    example = builder.info.features.deserialize_example(
        serialized, decoders={'video': tfds.decode.SkipDecoding()})
    sequence = tf.train.SequenceExample()
    sequence.context.feature[dmvr.LABEL].int64_list.value.append(int(example['label']))
    frames = sequence.feature_lists.feature_list[dmvr.FRAMES]
    for jpeg in example['video'].numpy():
      frames.feature.add().bytes_list.value.append(jpeg)
    records.append(sequence.SerializeToString())
  return records


def test_dmvr_reader_yields_the_tfds_clips(kinetics, tmp_path):
  """Scenic-format SequenceExamples of the same frames give the same clips."""
  _, _, data_dir, _ = kinetics
  records = scenic_sequence_examples(data_dir)
  for shard, part in enumerate((records[:2], records[2:])):
    with tf.io.TFRecordWriter(str(tmp_path / f'validation.tfrecord-{shard:05d}-of-00002')) as w:
      for record in part:
        w.write(record)
  pattern = str(tmp_path / '{split}.tfrecord@2')
  config = tiny_run_config(str(data_dir), **{'dataset.name': 'kinetics400'}).dataset
  tfds_batches = list(pipeline.eval_batches(config, 'validation', 4, num_clips=2,
                                            num_crops=3))
  config.update(format='dmvr', data_dir=pattern)
  dmvr_batches = list(pipeline.eval_batches(config, 'validation', 4, num_clips=2,
                                            num_crops=3))
  assert len(dmvr_batches) == len(tfds_batches) == 1
  np.testing.assert_array_equal(dmvr_batches[0]['mask'], tfds_batches[0]['mask'])
  real = tfds_batches[0]['mask'] > 0  # padding rows may hold any example
  for key in ('video', 'label'):
    np.testing.assert_array_equal(dmvr_batches[0][key][real], tfds_batches[0][key][real])
  assert dmvr.num_examples(pattern, 'validation') == len(KINETICS_VALIDATION)
  # Training streams resume at a step with the batches of an uninterrupted stream.
  config.train_split = 'validation'
  fresh = pipeline.train_batches(config, 2, seed=1)
  first = [next(fresh) for _ in range(3)]
  resumed = next(pipeline.train_batches(config, 2, seed=1, start_step=2))
  np.testing.assert_array_equal(resumed['video'], first[2]['video'])
  assert first[0]['video'].shape == (2, 4, 16, 16, 3)
  with pytest.raises(FileNotFoundError, match='2 of the 3 shards'):
    os.rename(tmp_path / 'validation.tfrecord-00001-of-00002',
              tmp_path / 'validation.tfrecord-00001-of-00003')
    dmvr.files(str(tmp_path / '{split}.tfrecord@3'), 'validation')


def test_dmvr_host_with_empty_files_runs_the_same_eval_steps(kinetics, tmp_path,
                                                             monkeypatch):
  """Two hosts (simulated), the second one's file empty: it runs as many eval
  batches as the first (all padding, mask 0), so their collectives match; training
  on it is refused with a message."""
  sequences = scenic_sequence_examples(kinetics[2])
  for shard, part in enumerate((sequences, [])):
    with tf.io.TFRecordWriter(str(tmp_path / f'validation.tfrecord-{shard:05d}-of-00002')) as w:
      for record in part:
        w.write(record)
  config = tiny_run_config(str(kinetics[2]), **{'dataset.name': 'kinetics400'}).dataset
  config.update(format='dmvr', data_dir=str(tmp_path / '{split}.tfrecord@2'))
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  masks = {}
  for host in (0, 1):
    monkeypatch.setattr(jax, 'process_index', lambda host=host: host)
    masks[host] = [b['mask'] for b in pipeline.eval_batches(config, 'validation', 4,
                                                             num_clips=1, num_crops=1)]
  assert len(masks[0]) == len(masks[1]) == -(-len(sequences) // 2)
  assert sum(m.sum() for m in masks[0]) == len(sequences)
  assert sum(m.sum() for m in masks[1]) == 0
  config.train_split = 'validation'
  with pytest.raises(ValueError, match='host 1 has 0 records of split validation'):
    next(pipeline.train_batches(config, 4, seed=1))


def test_bad_annotations_name_file_and_line(tmp_path):
  videos = str(tmp_path / 'videos')
  os.makedirs(videos)
  annotations = tmp_path / 'annotations'
  vf.write_csv(str(annotations / 'train.csv'), ['label', 'video', 'start', 'end'],
               [['a', 'x', 0, 10]])
  with pytest.raises(AnnotationError, match=r'train.csv:1: expected a header with columns '
                                            r'youtube_id,time_start,time_end'):
    vf.run_prepare('kinetics400', videos, str(annotations), tmp_path / 'out')
  header = ['label', 'youtube_id', 'time_start', 'time_end', 'split']
  vf.write_csv(str(annotations / 'train.csv'), header, [['a', 'x', 0, 10, 'train']])
  vf.write_csv(str(annotations / 'validate.csv'), header,
               [['a', 'y', 0, 10, 'val'], ['b', 'z', 0, 10, 'val']])
  with pytest.raises(AnnotationError, match=r"validate.csv:3: label 'b' is not a class"):
    vf.run_prepare('kinetics400', videos, str(annotations), tmp_path / 'out')


def test_every_dataset_is_registered_with_tfds():
  assert set(builders()) == {'kinetics400', 'kinetics600', 'kinetics700', 'ssv2',
                             'epic_kitchens_100', 'moments_in_time', 'video_folder'}
  for name in builders():
    assert tfds.builder_cls(name) is builders()[name]


# --- the other releases -----------------------------------------------------------

SSV2_TEMPLATES = ['Pushing [something] from left to right', 'Putting [something] on [something]',
                  'Holding [something]']


def write_ssv2(root):
  videos, annotations = os.path.join(root, 'videos'), os.path.join(root, 'labels')
  labels = {t.replace('[', '').replace(']', ''): str(i) for i, t in enumerate(SSV2_TEMPLATES)}
  vf.write_json(os.path.join(annotations, 'something-something-v2-labels.json'), labels)
  items = {'train': [], 'validation': []}
  for i in range(8):
    split = 'train' if i < 6 else 'validation'
    template = SSV2_TEMPLATES[i % 3]
    items[split].append({'id': str(1000 + i), 'label': template.replace('[something]', 'a cup'),
                         'template': template, 'placeholders': ['a cup']})
    vf.write_video(os.path.join(videos, f'{1000 + i}.webm'), 6 + i, 12,
                   (40, 54) if i % 2 else (54, 40), codec='libvpx-vp9')
  for split, entries in items.items():
    vf.write_json(os.path.join(annotations, f'something-something-v2-{split}.json'), entries)
  vf.write_json(os.path.join(annotations, 'something-something-v2-test.json'),
                [{'id': '2000'}])
  return videos, annotations


def write_moments(root):
  videos = annotations = os.path.join(root, 'Moments_in_Time_Raw')
  classes = ['blocking', 'adult+female+singing', 'running']
  os.makedirs(annotations)
  with open(os.path.join(annotations, 'moments_categories.txt'), 'w') as f:
    f.writelines(f'{c},{i}\n' for i, c in enumerate(classes))
  for split, csv_name, count in (('training', 'trainingSet.csv', 6),
                                 ('validation', 'validationSet.csv', 3)):
    rows = []
    for i in range(count):
      label = classes[i % 3]
      file = f'{label}/getty-clip-{split}-{i}.mp4'
      vf.write_video(os.path.join(videos, split, file), 10 + i, 30, (48, 64))
      rows.append([file, label, 3, 0])
    vf.write_csv(os.path.join(annotations, csv_name), None, rows)
  return videos, annotations


def write_folder_tree(root):
  videos = os.path.join(root, 'videos')
  for split, count in (('train', 6), ('validation', 2)):
    for i in range(count):
      label = ('cat', 'dog')[i % 2]
      vf.write_video(os.path.join(videos, split, label, f'{label}{i}.mp4'), 10, 25, (48, 64))
  return videos, None


@pytest.mark.parametrize('dataset', default_or_slow(  # video_folder: the kill test's
    ['ssv2', 'epic_kitchens_100', 'moments_in_time', 'video_folder/pets'],
    ['ssv2', 'moments_in_time']))
def test_other_releases_prepare_train_and_evaluate(dataset, tmp_path):
  release, _, name = dataset.partition('/')
  writer = {'ssv2': write_ssv2, 'epic_kitchens_100': vf.write_epic,
            'moments_in_time': write_moments, 'video_folder': write_folder_tree}[release]
  videos, annotations = writer(str(tmp_path))
  data_dir = tmp_path / 'tfds'
  report = vf.run_prepare(release, videos, annotations, data_dir, '--workers', '2',
                          *(['--name', name] if name else []))
  builder, examples = load(dataset, data_dir)
  extra = {}
  if dataset == 'ssv2':
    assert builder.info.features['label'].names == [
        t.replace('[', '').replace(']', '') for t in SSV2_TEMPLATES]
    assert report['examples'] == {'train': 6, 'validation': 2}
    for i in range(8):
      example = examples[str(1000 + i)]
      assert example['label'] == i % 3 and example['fps'] == 12.0
      assert levels(example['video']) == list(range(6 + i))  # its own 12 fps
      assert min(example['video'].shape[1:3]) == 32
  elif dataset == 'epic_kitchens_100':
    assert builder.info.features['verb'].names == vf.EPIC_VERBS
    assert builder.info.features['noun'].names == vf.EPIC_NOUNS
    assert [s['id'] for s in report['skipped']] == ['P09_09_0']
    # A 0.5 s..1.2 s segment of a 60 fps video: source frames 30..71 at 25 fps.
    segment = examples['P01_01_1']
    assert (segment['verb'], segment['noun']) == (1, 1)
    assert levels(segment['video']) == [min(30 + round(k * 60 / 25), 71) % vf.CYCLE
                                        for k in range(17)]
    assert len(segment['video']) == 17
    # Released frames 5..45 of an extension video (numbered at 50 fps) -> 20 frames.
    frames = examples['P03_101_0']['video']
    assert len(frames) == 20 and levels(frames)[0] == 4
    extra = {'dataset.label_key': ('noun', 'verb')}  # two heads
  elif dataset == 'moments_in_time':
    assert builder.info.features['label'].names == ['blocking', 'adult+female+singing',
                                                    'running']
    assert report['examples'] == {'train': 6, 'validation': 3}
    example = examples['running/getty-clip-training-2.mp4']
    assert example['label'] == 2 and len(example['video']) == int((12 / 30) * 25)
  else:
    assert builder.info.features['label'].names == ['cat', 'dog']
    assert report['examples'] == {'train': 6, 'validation': 2}
    assert examples[os.path.join('train', 'dog', 'dog1.mp4')]['label'] == 1
  result = train_and_test(data_dir, dataset, tmp_path, **extra)
  assert result['num_videos'] == report['examples']['validation']


def test_video_folder_from_a_csv_listing(tmp_path):
  videos = str(tmp_path / 'clips')
  for name in ('a.mp4', 'b.webm', 'c.mp4'):
    vf.write_video(os.path.join(videos, name), 8, 25, (48, 64),
                   'libvpx-vp9' if name.endswith('webm') else 'libx264')
  listing = vf.write_csv(str(tmp_path / 'list.csv'), ['path', 'label', 'split'],
                         [['a.mp4', 'jump', 'train'], ['b.webm', 'run', 'train'],
                          ['c.mp4', 'jump', 'validation'], ['gone.mp4', 'run', 'train']])
  report = vf.run_prepare('video_folder', videos, listing, tmp_path / 'tfds')
  builder, examples = load('video_folder', tmp_path / 'tfds')
  assert builder.info.features['label'].names == ['jump', 'run']
  assert report['examples'] == {'train': 2, 'validation': 1}
  assert [(s['id'], s['reason']) for s in report['skipped']] == [('gone.mp4',
                                                                  'file not found')]
  assert examples['b.webm']['label'] == 1 and examples['c.mp4']['split'] == 'validation'
  vf.write_csv(listing, None, [['a.mp4', 'jump', 'train', 'extra']])
  with pytest.raises(AnnotationError, match=r'list.csv:1: expected "path,label\[,split\]"'):
    vf.run_prepare('video_folder', videos, listing, tmp_path / 'other')
