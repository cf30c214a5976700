"""`config.init_from`: every checkpoint format fitted to a model, the per-group
report, errors; Epic-Kitchens' two heads against a hand computation."""
import flax
import jax
import ml_collections
import numpy as np
import pytest

from helpers import default_or_slow, random_params, random_video, tiny_model_config
from vivit import checkpoints, evaluate, initialise
from vivit.convert import from_scenic, guess_format, resize_params, to_transformers
from vivit.models import build_model
from vivit.recipes import base_config
from vivit.step import loss_and_metrics, one_hot_labels


def init_from(path, **overrides):
  config = base_config().init_from
  config.path = path
  config.update(overrides)
  return config


def bigger(config, **overrides):
  """`config` for 8 frames of 24x24 (the position grid grows in time and space)."""
  config = config.copy_and_resolve_references()
  config.input_size = (8, 24, 24)
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def source(tmp_path_factory):
  """A random model 1 saved as a vivit params directory with class names."""
  config = tiny_model_config()
  params = random_params(config)
  path = str(tmp_path_factory.mktemp('vivit') / 'params')
  checkpoints.save_params(path, config, params, [f'c{i}' for i in range(5)])
  return config, params, path


def test_vivit_checkpoint_resized_new_head_and_report(source):
  config, params, path = source
  assert guess_format(path) == 'vivit'
  target = bigger(config, num_classes=3)
  fitted, report = initialise.initial_params(init_from(path), target, seed=1)
  expected = resize_params(params, config, bigger(config))
  flat, flat_expected = (flax.traverse_util.flatten_dict(t, sep='/')
                         for t in (fitted, expected))
  for name, value in flat.items():
    if name.startswith('output_projection'):
      assert report[name] == ('fresh', 'restore_head is off')
    else:
      np.testing.assert_array_equal(value, flat_expected[name], err_msg=name)
  assert report['Transformer/posembed_input/pos_embedding'] == (
      'resized', '(1, 9, 16) -> (1, 37, 16)')
  assert report['embedding/kernel'] == ('loaded', '')
  lines = initialise.report_lines(report)
  assert lines == [
      'Transformer/encoder_norm: loaded',
      'Transformer/encoderblock_0..1: loaded',
      'Transformer/posembed_input: resized (1, 9, 16) -> (1, 37, 16)',
      'cls: loaded', 'embedding: loaded',
      'output_projection: fresh (restore_head is off)']
  logits = build_model(target).apply({'params': fitted}, random_video(size=(8, 24, 24)))
  assert logits.shape == (2, 3)


def test_restore_head_and_mismatches_name_the_parameter(source, tmp_path):
  config, params, path = source
  fitted, report = initialise.initial_params(init_from(path, restore_head=True), config)
  np.testing.assert_array_equal(fitted['output_projection']['kernel'],
                                params['output_projection']['kernel'])
  assert set(status for status, _ in report.values()) == {'loaded'}
  with pytest.raises(ValueError, match=r'output_projection/bias: the checkpoint has \(5,\), '
                                       r'the model needs \(3,\)'):
    initialise.initial_params(init_from(path, restore_head=True),
                              bigger(config, num_classes=3))
  with pytest.raises(ValueError, match=r"model.mlp_dim is 32 here, 24 in the checkpoint"):
    initialise.initial_params(init_from(path), bigger(config, mlp_dim=32))
  with pytest.raises(FileNotFoundError, match='checkpoint path .*missing does not exist'):
    initialise.initial_params(init_from(str(tmp_path / 'missing')), config)
  with pytest.raises(ValueError, match="unknown init_from.format 'orbax'"):
    initialise.initial_params(init_from(path, format='orbax'), config)
  # The checkpoint's architecture, this run's training fields and class count.
  wanted = bigger(config, dropout_rate=0.1, hidden_size=64, num_classes=7)
  derived = initialise.model_config_from_checkpoint(init_from(path), wanted)
  assert (derived.hidden_size, derived.dropout_rate, derived.num_classes) == (16, 0.1, 7)


def test_transformers_and_scenic_sources(source, tmp_path):
  config, params, _ = source
  hf_dir = str(tmp_path / 'hf')
  to_transformers(config, params, hf_dir, class_names=['a', 'b', 'c', 'd', 'e'])
  assert guess_format(hf_dir) == 'transformers'
  fitted, report = initialise.initial_params(init_from(hf_dir, restore_head=True),
                                             bigger(config))
  expected = resize_params(params, config, bigger(config))
  np.testing.assert_allclose(fitted['Transformer']['posembed_input']['pos_embedding'],
                             expected['Transformer']['posembed_input']['pos_embedding'],
                             atol=1e-6)
  np.testing.assert_allclose(fitted['output_projection']['kernel'],
                             params['output_projection']['kernel'], atol=1e-6)

  scenic_file = tmp_path / 'checkpoint_3'
  scenic_file.write_bytes(flax.serialization.msgpack_serialize(
      {'params': jax.tree_util.tree_map(np.asarray, params)}))
  scenic_config = tmp_path / 'scenic_config.py'
  scenic_config.write_text(
      'import ml_collections\n'
      'def get_config():\n'
      '  return ml_collections.ConfigDict(dict(\n'
      '      dataset_configs=dict(num_frames=4, crop_size=16),\n'
      '      model=dict(attention_config=dict(type="spacetime"), hidden_size=16,\n'
      '                 num_heads=4, num_layers=2, mlp_dim=24, classifier="token",\n'
      '                 patches=dict(size=(8, 8, 2)),\n'
      '                 temporal_encoding_config=dict(method="3d_conv"))))\n')
  with pytest.raises(ValueError, match='needs init_from.scenic_config'):
    initialise.initial_params(init_from(str(scenic_file), format='scenic'), config)
  fitted, _ = initialise.initial_params(
      init_from(str(scenic_file), format='scenic', scenic_config=str(scenic_config)),
      bigger(config))
  np.testing.assert_array_equal(fitted['Transformer']['posembed_input']['pos_embedding'],
                                expected['Transformer']['posembed_input']['pos_embedding'])
  # from_scenic's own target size.
  _, resized = from_scenic(str(scenic_file), ml_collections.ConfigDict(
      {'model': {**_scenic_model(), 'hidden_size': 16}, 'dataset_configs': {
          'num_frames': 4, 'crop_size': 16}}), input_size=(8, 24, 24))
  np.testing.assert_array_equal(resized['Transformer']['posembed_input']['pos_embedding'],
                                expected['Transformer']['posembed_input']['pos_embedding'])


def _scenic_model():
  return dict(attention_config=dict(type='spacetime'), num_heads=4, num_layers=2,
              mlp_dim=24, classifier='token', patches=dict(size=(8, 8, 2)),
              temporal_encoding_config=dict(method='3d_conv'))


def test_vit_source_report(vit):
  _, hf_dir, npz_path = vit
  assert guess_format(npz_path) == 'vit'
  assert guess_format(hf_dir) == 'vit'
  config = tiny_model_config('factorised_self_attention', input_size=(4, 16, 16))
  params, report = initialise.initial_params(init_from(npz_path), config)
  out = params['Transformer']['encoderblock_1']['MultiHeadDotProductAttention_time']['out']
  assert not np.any(out['kernel']) and not np.any(out['bias'])
  assert initialise.report_lines(report) == [
      'Transformer/encoder_norm: loaded',
      'Transformer/encoderblock_0..1: loaded (except LayerNorm_time fresh; '
      'MultiHeadDotProductAttention_time fresh (zero output))',
      'Transformer/posembed_input: resized (1, 5, 16) -> (1, 8, 16)',
      'cls: ignored (the model has no CLS token)',
      'embedding: bias loaded; kernel resized (8, 8, 3, 16) -> (2, 8, 8, 3, 16)',
      'head: ignored (restore_head is off)',
      'output_projection: fresh (restore_head is off)']


HEADS = (('noun', 3), ('verb', 2))


def test_two_heads_loss_and_metrics_by_hand():
  logits = np.array([[2.0, 0.0, 1.0, 0.5, -1.0],     # noun 0, verb 0
                     [0.0, 3.0, 1.0, -1.0, 2.0],     # noun 1, verb 1
                     [1.0, 0.0, 0.0, 0.0, 4.0]], np.float32)  # noun 0, verb 1
  labels = np.array([[0, 0], [1, 0], [2, 1]])
  targets = one_hot_labels(labels, 5, HEADS)
  np.testing.assert_array_equal(targets[1], [0, 1, 0, 1, 0])
  loss, metrics = loss_and_metrics(logits, targets, labels, HEADS)

  def cross_entropy(row, label):
    return -(row[label] - np.log(np.sum(np.exp(row))))
  expected = np.mean([cross_entropy(l[:3], n) + cross_entropy(l[3:], v)
                      for l, (n, v) in zip(logits, labels)])
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  assert float(metrics['noun_accuracy']) == pytest.approx(2 / 3)
  assert float(metrics['verb_accuracy']) == pytest.approx(2 / 3)
  assert float(metrics['accuracy']) == pytest.approx(1 / 3)  # only clip 0 has both

  result = evaluate.multi_head_metrics(logits, labels, HEADS)
  assert result['top1'] == pytest.approx(1 / 3)
  assert result['noun_top1'] == pytest.approx(2 / 3)
  assert result['verb_top1'] == pytest.approx(2 / 3)
  assert result['heads']['noun']['confusion_matrix'][2] == [1, 0, 0]
  assert evaluate.scalar_metrics(result) == {
      'top1': result['top1'], 'noun_top1': result['noun_top1'],
      'verb_top1': result['verb_top1'], 'noun_top5': 1.0, 'verb_top5': 1.0, 'num_videos': 3}


PAPER_CONFIGS = ['kinetics400/vivit_b_16x2', 'kinetics400/vivit_b_16x2_fe',
                 'kinetics400/vivit_l_16x2_fe', 'kinetics600/vivit_l_16x2_fe',
                 'ssv2/vivit_l_16x2_fe', 'epic_kitchens/vivit_l_16x2_fe']


@pytest.fixture(scope='module')
def small_datasets(tmp_path_factory):
  """A TFDS directory holding synthetic_motion/tiny."""
  from vivit import datasets
  root = tmp_path_factory.mktemp('datasets')
  datasets.get_builder('synthetic_motion/tiny', str(root))
  return str(root)


@pytest.mark.parametrize('name', default_or_slow(  # model 1 from .npz, model 2 from HF
    PAPER_CONFIGS, ['kinetics400/vivit_b_16x2', 'kinetics600/vivit_l_16x2_fe']))
def test_paper_configs_train_two_steps_from_a_vit(name, vit, small_datasets, tmp_path):
  """Every recipe (RandAugment, mixup, label smoothing, stochastic depth, Epic's two
  heads) at a reduced size, initialised from a test-made ViT."""
  import os
  from vivit.recipes import load_config
  from vivit.train import train_and_evaluate
  _, hf_dir, npz_path = vit
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  config = load_config(os.path.join(root, 'configs', name + '.py'))
  config.model.update(hidden_size=16, num_heads=4, num_layers=2, mlp_dim=24,
                      tubelet=(2, 8, 8), num_classes=None)
  config.model.temporal.update(num_layers=1, num_heads=4, mlp_dim=24)
  config.dataset.update(data_dir=small_datasets, num_frames=4, crop_size=16, min_resize=16)
  if name.startswith('epic'):  # Epic: its test videos, heads sized by their labels
    from video_files import run_prepare, write_epic
    run_prepare('epic_kitchens_100', *write_epic(str(tmp_path / 'epic')), small_datasets)
  else:
    config.dataset.update(name='synthetic_motion/tiny', test_split='test')
  config.training.update(batch_size=4, num_steps=2, log_every=1, eval_every=2,
                         checkpoint_every=2, grad_clip_group=2)
  config.eval.update(batch_size=4, num_clips=1, num_crops=1)
  config.init_from.path = hf_dir if name.startswith('kinetics600') else npz_path
  result = train_and_evaluate(config, str(tmp_path))
  assert result['step'] == 2 and 0 <= result['val_top1'] <= 1
  report = (tmp_path / 'initialisation.txt').read_text()
  assert 'embedding: bias loaded; kernel resized (8, 8, 3, 16) -> (2, 8, 8, 3, 16)' in report
  encoder = 'Transformer' if name.endswith('16x2') else 'SpatialTransformer'
  assert f'{encoder}/encoderblock_0..1: loaded\n' in report
