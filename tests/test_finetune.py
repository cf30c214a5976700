"""Fine-tuning end to end, as a user does it: a model trained on `synthetic_motion`
(10 classes, 8 frames) fine-tuned on their own videos (prepared with `video_folder`)
with other labels and another frame count, against training from scratch; then
`vivit.predict` on video files."""
import os

import numpy as np
import pytest

import video_files as vf
from helpers import train_small_synthetic
from vivit import evaluate, prepare
from vivit.convert import to_transformers
from vivit.datasets import synthetic
from vivit.predict import main as predict_main
from vivit.recipes import load_config
from vivit.train import train_and_evaluate
from vivit.workdir import load_model_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# synthetic_motion's time-reversal pairs as one class each: the new label set.
AXES = ('horizontal', 'vertical', 'diagonal', 'scale', 'fade')
FINETUNE_STEPS = 300


def axis(label: int) -> str:
  return AXES[label // 2]


@pytest.fixture(scope='module')
def pretrained(tmp_path_factory):
  """A small ViViT trained on synthetic_motion (8 frames, stride 2)."""
  workdir, result = train_small_synthetic(tmp_path_factory.mktemp('pretrained'), 1000)
  assert result['val_top1'] > 0.5
  return workdir


def write_clips(directory, split, count, seed, codec='libx264', extension='mp4'):
  """`count` synthetic_motion clips as video files: [(file name, label)]."""
  rng = np.random.default_rng(seed)
  rows = []
  for i in range(count):
    label = i % len(synthetic.CLASS_NAMES)
    name = f'{split}/{i:03d}.{extension}'
    vf.write_frames(os.path.join(directory, name), synthetic.render_clip(label, rng),
                    codec=codec)
    rows.append((name, label))
  return rows


@pytest.fixture(scope='module')
def own_videos(tmp_path_factory):
  """'Your own videos': mp4 files labelled by motion axis, prepared as video_folder."""
  root = tmp_path_factory.mktemp('own')
  videos = str(root / 'videos')
  rows = [(name, axis(label), split) for split, count, seed in
          (('train', 400, 10), ('validation', 60, 11))
          for name, label in write_clips(videos, split, count, seed)]
  listing = vf.write_csv(str(root / 'labels.csv'), ['path', 'label', 'split'], rows)
  prepare.prepare(prepare.parse_args(['video_folder', '--videos', videos, '--annotations',
                                      listing, '--data_dir', str(root / 'tfds'),
                                      '--short_side', '32']))
  return str(root / 'tfds')


def own_videos_config(data_dir, init_path=None):
  """configs/finetune.py on the prepared videos: 16 frames at stride 1."""
  config = load_config(os.path.join(ROOT, 'configs', 'finetune.py'))
  config.dataset.update(name='video_folder', data_dir=data_dir, num_frames=16, stride=1,
                        min_resize=32, scale_jitter=(1.0, 1.25), flip=False)
  config.training.update(batch_size=16, num_steps=FINETUNE_STEPS, learning_rate=0.03,
                         warmup_epochs=1.0, eval_every=FINETUNE_STEPS, log_every=40,
                         checkpoint_every=FINETUNE_STEPS)
  config.eval.update(batch_size=20, num_clips=1, num_crops=1)
  config.init_from.path = init_path
  return config


@pytest.fixture(scope='module')
def finetuned(pretrained, own_videos, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('finetuned'))
  return workdir, train_and_evaluate(own_videos_config(own_videos, pretrained), workdir)


@pytest.mark.slow  # ~2 min: pretraining, then two fine-tunes
def test_finetuning_beats_training_from_scratch(pretrained, own_videos, finetuned,
                                                tmp_path):
  workdir, result = finetuned
  with open(os.path.join(workdir, 'initialisation.txt')) as f:
    log = f.read()
  # The checkpoint's architecture with a 5-class head, for 16-frame clips.
  model = load_model_config(workdir)
  assert (model.hidden_size, model.num_classes, tuple(model.input_size)) == (
      32, len(AXES), (16, 32, 32))
  assert 'Transformer/posembed_input: resized (1, 33, 32) -> (1, 65, 32)' in log
  assert 'output_projection: fresh (restore_head is off)' in log
  assert 'Transformer/encoderblock_0..1: loaded' in log
  # Evaluation takes the model from the workdir, names from the dataset.
  tested = evaluate.run(own_videos_config(own_videos, pretrained), workdir)
  assert tested['top1'] == pytest.approx(result['val_top1'])
  assert tested['class_names'] == sorted(AXES)
  # Another workdir's model, at another frame count: its position embeddings resized.
  other = own_videos_config(own_videos)
  other.dataset.update(num_frames=8, stride=2)
  tested = evaluate.run(other, str(tmp_path / 'eval8'), checkpoint=workdir)
  assert tested['num_videos'] == 60 and tested['top1'] > 0.4

  # The same model and steps from scratch, with the synthetic recipe's optimiser.
  scratch = own_videos_config(own_videos)
  scratch.init_from.update(model_from_checkpoint=False, from_scratch=True)
  scratch.model = model
  scratch.model.update(tubelet_init='lecun_normal', input_size=(16, 32, 32))
  scratch.training.update(optimizer='adamw', learning_rate=1e-3, weight_decay=1e-4)
  from_scratch = train_and_evaluate(scratch, str(tmp_path / 'scratch'))
  print(f"fine-tuned {result['val_top1']:.3f}, from scratch {from_scratch['val_top1']:.3f}")
  assert result['val_top1'] >= 0.7
  assert result['val_top1'] >= from_scratch['val_top1'] + 0.3


@pytest.mark.slow  # uses the fine-tuned model above
def test_predict_names_the_class_of_video_files(finetuned, tmp_path, capsys):
  workdir, _ = finetuned
  rows = (write_clips(str(tmp_path), 'mp4', 10, seed=20)
          + write_clips(str(tmp_path), 'webm', 10, seed=21, codec='libvpx-vp9',
                        extension='webm'))
  right = 0
  for name, label in rows:
    capsys.readouterr()
    assert predict_main(['--checkpoint', workdir, '--video', str(tmp_path / name),
                         '--views', '2x3']) == 0
    lines = capsys.readouterr().out.split('\n')
    top = lines[0].split()
    assert len([l for l in lines if l.strip()]) == len(AXES)  # top-5 of 5
    assert top[0] in AXES and 0 < float(top[1]) <= 1
    right += top[0] == axis(label)
  # The model is right on ~82 % of validation clips; chance is 20 %.
  assert right >= 12, f'{right} of {len(rows)} right'


@pytest.mark.slow  # ~35 s; tests/test_initialise.py covers fitting a workdir's params
def test_finetune_config_from_a_workdir_then_evaluate_and_predict(tmp_path):
  """The quick version of the above: configs/finetune.py takes a tiny workdir's
  model (4 frames) to 8 frames, then evaluation and predict read the new workdir."""
  data_dir = str(tmp_path / 'tfds')
  base = load_config(os.path.join(ROOT, 'configs', 'synthetic_motion.py'))
  base.dataset.update(name='synthetic_motion/tiny', data_dir=data_dir, num_frames=4)
  base.model.update(hidden_size=16, num_layers=1, mlp_dim=32)
  base.training.update(num_steps=2, batch_size=8, eval_every=2, log_every=1)
  train_and_evaluate(base, str(tmp_path / 'base'))

  config = load_config(os.path.join(ROOT, 'configs', 'finetune.py'))
  config.dataset.update(name='synthetic_motion/tiny', data_dir=data_dir, num_frames=8,
                        min_resize=32, flip=False)
  config.training.update(num_steps=2, batch_size=8, eval_every=2, log_every=1,
                         checkpoint_every=2)
  config.eval.update(batch_size=8, num_clips=1, num_crops=1)
  config.init_from.path = str(tmp_path / 'base')
  workdir = str(tmp_path / 'ft')
  assert train_and_evaluate(config, workdir)['step'] == 2
  model = load_model_config(workdir)
  assert (model.hidden_size, tuple(model.input_size), model.num_classes) == (
      16, (8, 32, 32), 10)
  report = open(os.path.join(workdir, 'initialisation.txt')).read()
  assert 'Transformer/posembed_input: resized (1, 17, 16) -> (1, 33, 16)' in report
  assert evaluate.run(config, workdir)['num_videos'] == 24  # the validation split

  video = vf.write_frames(str(tmp_path / 'clip.mp4'),
                          synthetic.render_clip(3, np.random.default_rng(0)))
  assert predict_main(['--checkpoint', workdir, '--video', video]) == 0


def test_predict_with_hf_names_and_errors(tmp_path, capsys):
  from helpers import random_params, tiny_model_config
  config = tiny_model_config()
  names = ['archery', 'bowling', 'cooking', 'dancing', 'eating']
  to_transformers(config, random_params(config), str(tmp_path / 'hf'), class_names=names)
  video = vf.write_video(str(tmp_path / 'clip.mp4'), 12, 25, (20, 24))
  assert predict_main(['--checkpoint', str(tmp_path / 'hf'), '--video', video,
                       '--top', '3']) == 0
  lines = [l.split() for l in capsys.readouterr().out.strip().split('\n')]
  assert len(lines) == 3 and all(name in names for name, _ in lines)
  probabilities = [float(p) for _, p in lines]
  assert probabilities == sorted(probabilities, reverse=True)
  # Converted, the names travel in class_names.json: the same answer.
  from vivit.convert.__main__ import main as convert_main
  assert convert_main(['--from', 'transformers', '--src', str(tmp_path / 'hf'),
                       '--dst', str(tmp_path / 'converted')]) == 0
  capsys.readouterr()
  assert predict_main(['--checkpoint', str(tmp_path / 'converted'), '--video', video,
                       '--top', '3']) == 0
  assert [l.split() for l in capsys.readouterr().out.strip().split('\n')] == lines

  bad = tmp_path / 'broken.mp4'
  bad.write_bytes(b'not a video at all' * 10)
  assert predict_main(['--checkpoint', str(tmp_path / 'hf'), '--video', str(bad)]) == 2
  err = capsys.readouterr().err.strip()
  assert err.startswith(f'error: {bad}: cannot open') and '\n' not in err
  assert predict_main(['--checkpoint', str(tmp_path / 'nothing'), '--video', video]) == 2
  assert 'nothing does not exist' in capsys.readouterr().err
  assert predict_main(['--checkpoint', str(tmp_path / 'hf'), '--video', video,
                       '--views', '4by3']) == 2
  assert 'CLIPSxCROPS' in capsys.readouterr().err
