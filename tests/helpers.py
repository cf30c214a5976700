"""Helpers that several test modules share (fixtures live in conftest.py)."""
import json
import os
import sys

import jax
import orbax.checkpoint as ocp
from ml_collections import ConfigDict

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
  """The environment of a subprocess run on `devices` CPU devices."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
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
    target = jax.tree_util.tree_map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        checkpointer.metadata(path).item_metadata)
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
