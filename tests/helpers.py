"""Helpers that several test modules share (fixtures live in conftest.py)."""
import json
import os
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from ml_collections import ConfigDict

from vivit.models import get_model_config, init_params, variants
from vivit.recipes import base_config, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'configs', 'synthetic_motion.py')


def tiny_overrides(data_dir, **extra):
  """Command-line overrides for a seconds-long run on `synthetic_motion/tiny`."""
  values = {
      'dataset.name': 'synthetic_motion/tiny', 'dataset.data_dir': data_dir,
      'dataset.num_frames': 4, 'dataset.min_resize': 16, 'dataset.crop_size': 16,
      'model.hidden_size': 16, 'model.num_layers': 1, 'model.mlp_dim': 32,
      'training.batch_size': 8, 'training.num_steps': 12, 'training.log_every': 1,
      'training.eval_every': 6, 'training.checkpoint_every': 2,
      'eval.batch_size': 8, 'eval.num_clips': 2, 'eval.num_crops': 1,
      'mesh.fsdp_min_size': 0}  # tiny parameters: shard them all under FSDP
  values.update(extra)
  return values


def tiny_run_config(data_dir, **extra):
  """The config of `tiny_overrides`' run, for an in-process `train_and_evaluate`."""
  config = load_config(CONFIG)
  for key, value in tiny_overrides(data_dir, **extra).items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def cli_args(data_dir, workdir, **extra):
  """`python -m vivit.train` of `tiny_overrides`' run."""
  return [sys.executable, '-m', 'vivit.train', f'--config={CONFIG}', f'--workdir={workdir}'] + [
      f'--config.{k}={v}' for k, v in tiny_overrides(data_dir, **extra).items()]


def run_env(devices=1):
  """The environment of a subprocess run on `devices` CPU devices (with the session's
  other XLA_FLAGS)."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  inherited = [flag for flag in os.environ.get('XLA_FLAGS', '').split()
               if not flag.startswith('--xla_force_host_platform_device_count')]
  env['XLA_FLAGS'] = ' '.join(inherited + [f'--xla_force_host_platform_device_count={devices}'])
  return env


def read_metrics(workdir, split='train'):
  """The records of `split` in WORKDIR/metrics.jsonl."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [r for r in map(json.loads, f) if r['split'] == split]


def final_params(workdir, step):
  """The params of checkpoint `step`, on this process's first device whatever
  topology saved them."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    metadata = checkpointer.metadata(path)
    # orbax < 0.11.24 gives the tree's metadata itself, later ones a StepMetadata.
    metadata = getattr(metadata, 'item_metadata', metadata)
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        getattr(metadata, 'tree', metadata))
    state = checkpointer.restore(path, target)
  return state['params']


def training_config(**fields) -> ConfigDict:
  """The base config's training section with `fields` changed."""
  training = base_config().training
  training.update(fields)
  return training


# Every source of training randomness on: dropout, stochastic depth (2 layers: the
# first block's rate is 0) and mixup.
REGULARISED = {'model.num_layers': 2, 'model.dropout_rate': 0.1,
               'model.stochastic_depth': 0.5, 'training.mixup': 0.2,
               'training.grad_clip_group': 4, 'training.grad_clip': 0.05}


INPUT_SIZE = (4, 16, 16)  # time, height, width


def tiny_model_config(variant=variants.SPATIO_TEMPORAL, embedding='tubelet', classifier=None,
                **overrides):
  """A 2-layer, hidden-16, 4-head model on 4x16x16 clips (tubelet 2x8x8)."""
  config = get_model_config('Ti/8x2' + variants.get(variant).suffix, hidden_size=16,
                            num_heads=4, num_layers=2, mlp_dim=24, num_classes=5,
                            input_size=INPUT_SIZE, embedding=embedding)
  config.temporal.update(num_layers=2, num_heads=2, mlp_dim=20)
  if embedding == 'frame':
    config.num_sampled_frames = 3  # scenic samples frames 1, 2, 3 of 4
  if classifier:
    config.classifier = classifier
  config.update(overrides)
  return config


def random_params(config, seed=0, scale=0.3):
  """Params with every entry random, zero-initialised ones (head, CLS) included."""
  params = init_params(config, jax.random.PRNGKey(seed))
  leaves, treedef = jax.tree_util.tree_flatten(params)
  rng = np.random.RandomState(seed)
  leaves = [np.asarray(l) + scale * rng.standard_normal(l.shape).astype(np.float32)
            for l in leaves]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def random_video(batch=2, size=INPUT_SIZE, seed=0):
  return np.random.RandomState(seed).uniform(-1, 1, (batch, *size, 3)).astype(np.float32)


VIT_CLASSES = 5
# Two label heads (5 classes), as Epic-Kitchens' verb and noun.
HEADS = {'verb': ['take', 'put'], 'noun': ['cup', 'knife', 'tap']}


# (variant, embedding, classifier) that the paper defines.
VARIANT_CASES = [
    (variant.name, embedding, classifier)
    for variant in variants.VARIANTS
    for embedding in ('tubelet', 'frame')
    for classifier in (('token', 'gap') if variant.has_cls else ('gap',))
]
# Of those, the default run's: every variant, both embeddings, both classifiers.
DEFAULT_VARIANT_CASES = [
    (variants.SPATIO_TEMPORAL, 'tubelet', 'gap'), (variants.SPATIO_TEMPORAL, 'frame', 'token'),
    (variants.FACTORISED_ENCODER, 'tubelet', 'token'),
    (variants.FACTORISED_SELF_ATTENTION, 'tubelet', 'gap'),
    (variants.FACTORISED_DOT_PRODUCT, 'frame', 'gap')]


def assert_quiet(output: str) -> None:
  """A command's output has the project's own lines only: no library start-up
  banners (TensorFlow, oneDNN, absl, TFDS)."""
  for banner in ('oneDNN', 'TensorFlow', 'absl::InitializeLog', 'I0000',
                 'Downloading and preparing'):
    assert banner not in output, output[-3000:]


def default_or_slow(cases, default, unpack=False):
  """`cases` as pytest params, those not in `default` marked slow: the default run
  covers each kind once, `-m slow` the rest of the cross product. `unpack`: for a
  parametrisation of several names."""
  return [pytest.param(*(case if unpack else (case,)),
                       marks=() if case in default else pytest.mark.slow,
                       id='-'.join(map(str, case)) if isinstance(case, tuple) else None)
          for case in cases]


def train_small_synthetic(root, steps: int, variant=variants.SPATIO_TEMPORAL,
                          learning_rate: float = 3e-3):
  """A small ViViT of `variant` (hidden 32, 2 layers) trained `steps` steps on
  synthetic_motion (8 frames, stride 2) in `root`/run, the dataset in `root`/tfds:
  (workdir, result)."""
  from vivit.train import train_and_evaluate
  config = load_config(f'{CONFIG}:{variant}')
  config.dataset.data_dir = os.path.join(str(root), 'tfds')
  config.model.update(hidden_size=32, num_heads=2, num_layers=2, mlp_dim=64)
  config.training.update(num_steps=steps, learning_rate=learning_rate, warmup_epochs=0.1,
                         eval_every=steps, log_every=max(steps // 3, 1))
  workdir = os.path.join(str(root), 'run')
  return workdir, train_and_evaluate(config, workdir)


def untrained_workdir(path, data_dir, model_config, class_names, **extra):
  """A training workdir as `vivit-train` leaves one (config.json, model_config.json,
  class_names.json and best params), made without training: the run of
  `tiny_overrides(data_dir, **extra)` with `model_config`'s `random_params`."""
  from vivit import checkpoints
  from vivit.workdir import record_workdir_model, save_class_names
  config = tiny_run_config(data_dir, **extra)
  config.model = model_config
  os.makedirs(path)
  with open(os.path.join(path, 'config.json'), 'w') as f:
    f.write(config.to_json(indent=2))
  record_workdir_model(path, model_config)
  save_class_names(path, class_names)
  with checkpoints.best_manager(path) as best:
    checkpoints.save(best, 1, random_params(model_config), metrics={'top1': 0.5})
  return str(path)
