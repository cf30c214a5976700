"""Config files: the one base config they all update, and loading them.

`base_config()` holds every field a run reads, each with its one default (the paper's
recipe, as scenic's released configs, where it fixes one). Config files update what
they change: `paper_config(...)` the fields that differ between the paper's rows.
`load_config('configs/X.py:arg')` reads a config file outside the command line.
"""
import importlib.util
import os
import re
from typing import Optional, Sequence

import ml_collections
from ml_collections import config_dict

from vivit import loggers
from vivit.errors import ConfigError, MissingError
from vivit.models import get_model_config
from vivit.ranges import finite, whole

# Augmentation per recipe, as scenic's ViViT configs set it
# (scenic/projects/vivit/configs/<dataset>/*.py, `dataset_configs.augmentation_params`):
# scale jitter 0.9-1.33 with independent height and width factors (`do_jitter_scale`,
# `prob_scale_jitter=1`), horizontal flips (DMVR's default, SSv2 included),
# colour augmentation with probability 0.8 and colour drop 0.1 on Kinetics
# (`do_color_augment`, `prob_color_augment`, `prob_color_drop`), none but
# RandAugment on SSv2 and Epic-Kitchens (`do_rand_augment`).
KINETICS_AUGMENT = dict(scale_jitter=(0.9, 1.33), flip=True, colour_augment=0.8,
                        colour_drop=0.1, randaugment=None)
# ^ kinetics400/vivit_base_k400.py
SSV2_AUGMENT = dict(scale_jitter=(0.9, 1.33), flip=True, colour_augment=0.0,
                    colour_drop=0.0, randaugment=(2, 20))
# ^ something_something_v2/vivit_large_factorised_encoder.py
EPIC_AUGMENT = dict(scale_jitter=(0.9, 1.33), flip=True, colour_augment=0.0,
                    colour_drop=0.0, randaugment=(2, 15))
# ^ epic_kitchens/vivit_large_factorised_encoder.py


def load_config(path: str):
  """`get_config()` of a Python config file (scenic's or ours); `FILE:ARG` passes
  ARG to `get_config`, as `--config FILE:ARG` does."""
  path, _, arg = path.partition(':')
  spec = importlib.util.spec_from_file_location('loaded_config', path)
  if spec is None or spec.loader is None or not os.path.isfile(path):
    raise MissingError(f'cannot load a config from {path}')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def model_config(name: str, num_classes: Optional[int] = None,
                 **overrides) -> ml_collections.ConfigDict:
  """`get_model_config(name, **overrides)` whose `num_classes` may be None (the
  dataset's) and still be set from the command line."""
  config = get_model_config(name, **overrides)
  config.num_classes = config_dict.FieldReference(num_classes, field_type=int)
  return config


def base_config() -> ml_collections.ConfigDict:
  """Every field of a run with its default: ViViT-B/16x2 (model 1) fine-tuned with
  the paper's recipe. 32 frames, tubelet 16x16x2, momentum SGD, cosine decay with
  2.5 warm-up epochs, grad-norm clip 1 per group of 8 examples, batch 64, no weight
  decay, no dropout, Kinetics augmentation, 4x3-view test."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = ml_collections.ConfigDict(dict(
      KINETICS_AUGMENT, name=config_dict.placeholder(str),
      # format 'dmvr': data_dir is a pattern of scenic/DMVR tfrecords, e.g.
      # '/data/k400/{split}.tfrecord@1024' (see vivit.input.dmvr).
      format='tfds', data_dir=config_dict.placeholder(str),
      # The label features the model predicts, one head each (Epic-Kitchens: noun, verb).
      label_key=('label',),
      train_split='train', eval_split='validation', test_split='test',
      # None: the model's frame count and crop; min_resize: crop * 256 / 224.
      num_frames=config_dict.placeholder(int), crop_size=config_dict.placeholder(int),
      min_resize=config_dict.placeholder(int), stride=2,
      randaugment=config_dict.placeholder(tuple),  # (num_layers, magnitude)
      # The training ops after the crop (vivit.input.augment) that may run, each when
      # its fields turn it on: randaugment (randaugment), colour (colour_augment,
      # colour_drop).
      augment_ops=('randaugment', 'colour'),
      # How training views are resampled (vivit.input.crop): 'scenic' (DMVR's two
      # resizes, each truncated to uint8: bit-exact), or 'one_pass' (one bilinear
      # sampling of the stored frames, rounded once).
      resample='scenic',
      num_threads=0,  # 0: one input thread per core
      shuffle_buffer=1024,  # format 'dmvr' streams only: serialized examples
      shuffle_frames=False))  # True destroys temporal order (experiments/shuffled_frames.py)
  config.model = model_config('B/16x2')
  config.init_from = ml_collections.ConfigDict(dict(
      # A checkpoint to start from (see vivit.initialise): a 2-D ViT (the paper:
      # ImageNet-21k ViT-B_16.npz), or a ViViT in any format vivit.convert reads.
      path=config_dict.placeholder(str),
      format=config_dict.placeholder(str),  # vit, scenic, transformers, vivit; None: guessed
      kernel_init='central_frame', posemb='tile', temporal_attention_init='zeros',
      restore_head=False,
      scenic_config=config_dict.placeholder(str),  # format scenic: its config file
      # True: the model is the checkpoint's (a ViViT), with a new head.
      model_from_checkpoint=False,
      # False: training refuses to start without `path` (a fine-tuning recipe), unless
      # this is set to train from random weights on purpose.
      from_scratch=False))
  config.training = ml_collections.ConfigDict(dict(
      batch_size=64, num_epochs=30.0, num_steps=config_dict.placeholder(int),
      warmup_epochs=2.5, optimizer='sgd', learning_rate=0.1, momentum=0.9,
      b1=0.9, b2=0.999,  # adamw only
      weight_decay=0.0, schedule='cosine', grad_clip=1.0,
      # Fine-tuning recipes (vivit.optim; configs/finetune_modern.py). Each off by
      # default, as the paper trains. Parameters are named by their '/'-joined path
      # (`Transformer/encoderblock_0/LayerNorm_0/scale`, `output_projection/kernel`);
      # the patterns are regular expressions searched in those names, each of which
      # must match some parameter.
      # Layer-wise learning-rate decay (BEiT, MAE, VideoMAE: 0.75): each parameter's
      # learning rate times layer_decay ** (depth + 1 - its layer), the embeddings
      # layer 0, encoder block k layer k, the head (and final LayerNorm) depth + 1;
      # model 2's spatial then temporal blocks as one stack (vivit.optim.layer_numbers).
      # 1.0: off.
      layer_decay=1.0,
      # Parameters that weight decay leaves alone, e.g. (r'(^|/)(bias|scale)$',
      # r'(^|/)(pos_embedding|cls\w*)$'): biases, LayerNorm scales, position
      # embeddings, CLS tokens. Empty: every parameter decays.
      weight_decay_exclude=(),
      # Parameters not trained (no update, no decay: bit-identical after training),
      # e.g. ('^(?!output_projection/)',): train the head only; ('^embedding/',):
      # keep the patch embedding as loaded.
      freeze=(),
      # Clip per 8 examples as scenic does per device (its configs: batch 64 on one
      # 8-core TPU host), so the result does not depend on the devices used. None:
      # clip the batch's gradient.
      grad_clip_group=config_dict.FieldReference(8, field_type=int),
      label_smoothing=0.0, mixup=0.0,
      # N > 1: each batch's gradient summed over N micro-batches of batch_size / N
      # (one pass's activations: memory), one update per batch; 1: off.
      grad_accumulation=1,
      # d in (0, 1): an exponential moving average of the params, ema = d * ema +
      # (1 - d) * params after each update, validated beside them and saved in best/
      # when better; None: off.
      ema_decay=config_dict.placeholder(float),
      log_every=100, eval_every=5000, checkpoint_every=1000, keep_checkpoints=3,
      # N > 0: a jax profiler trace of N steps from the second after each start, into
      # WORKDIR/tensorboard/plugins/profile/ (vivit.profiling); 0: none.
      profile_steps=0,
      # Where metrics go besides WORKDIR/metrics.jsonl (vivit.loggers): 'tensorboard'
      # (WORKDIR/tensorboard/), 'wandb', 'mlflow' (each with the extra of its name).
      # logger_project: their W&B project, MLflow experiment; None: the workdir's name.
      loggers=('tensorboard',), logger_project=config_dict.placeholder(str),
      nonfinite='stop',  # or 'skip': steps with a non-finite update are skipped
      # When every checkpoint of the workdir is damaged: train again from step 0
      # instead of stopping (the damaged ones stay in WORKDIR/set_aside/).
      restart_from_scratch=False,
      # Resume even with changes that break the run's determinism or schedule (a new
      # learning rate, batch size, dataset...: `vivit.config_changes`).
      allow_changes=False))
  config.eval = ml_collections.ConfigDict(dict(batch_size=64, num_clips=4, num_crops=3))
  config.mesh = ml_collections.ConfigDict(dict(
      fsdp=1,  # devices per FSDP group; the rest of the mesh is data-parallel
      fsdp_min_size=2 ** 12))  # smaller parameters stay replicated
  return config


def paper_config(model_name: str, dataset: str, num_classes: Optional[int], *,
                 learning_rate: float, num_epochs: float, stride: int = 2,
                 min_resize: int = 256, crop_size: int = 224, augment=None,
                 test_split: str = 'test', label_smoothing: float = 0.0,
                 mixup: float = 0.0, stochastic_depth: float = 0.0,
                 temporal_layers: Optional[int] = None,
                 label_key: Sequence[str] = ('label',)) -> ml_collections.ConfigDict:
  """One row of the paper's recipe table: the base config with this row's model,
  data, schedule and regularisation; `augment` one of the *_AUGMENT recipes
  (default Kinetics'); `num_classes` None: the dataset's."""
  config = base_config()
  config.dataset.update(name=dataset, label_key=tuple(label_key), test_split=test_split,
                        num_frames=32, stride=stride, min_resize=min_resize,
                        crop_size=crop_size, **(augment or KINETICS_AUGMENT))
  config.model = model_config(model_name, num_classes, input_size=(32, crop_size, crop_size),
                              stochastic_depth=stochastic_depth)
  if temporal_layers is not None:
    config.model.temporal.num_layers = temporal_layers
  config.training.update(learning_rate=learning_rate, num_epochs=float(num_epochs),
                         label_smoothing=label_smoothing, mixup=mixup)
  return config


# The numeric fields of a run and what each may hold (`check_config`).
FIELD_RANGES = {
    'seed': whole(0, 2 ** 32 - 1),
    'dataset.num_frames': whole(optional=True),
    'dataset.crop_size': whole(optional=True),
    'dataset.min_resize': whole(optional=True),
    'dataset.stride': whole(),
    'dataset.colour_augment': finite(0, 1),  # probabilities
    'dataset.colour_drop': finite(0, 1),
    'dataset.num_threads': whole(0),  # 0: one per core
    'dataset.shuffle_buffer': whole(),
    'training.batch_size': whole(),
    'training.num_epochs': finite(0, above=True),
    'training.num_steps': whole(optional=True),  # None: from num_epochs
    'training.warmup_epochs': finite(0),
    'training.learning_rate': finite(0),
    'training.momentum': finite(0, 1),
    'training.b1': finite(0, 1, below=True),
    'training.b2': finite(0, 1, below=True),
    'training.weight_decay': finite(0),
    'training.layer_decay': finite(0, 1, above=True),  # 1: off
    'training.grad_clip': finite(0, optional=True),  # None or 0: no clipping
    'training.grad_clip_group': whole(0, optional=True),  # None or 0: the whole batch
    'training.label_smoothing': finite(0, 1),
    'training.mixup': finite(0),  # Beta(mixup, mixup); 0: off
    'training.grad_accumulation': whole(),  # micro-batches per batch; 1: off
    'training.ema_decay': finite(0, 1, above=True, below=True, optional=True),  # None: off
    'training.log_every': whole(),
    'training.eval_every': whole(),
    'training.checkpoint_every': whole(),
    'training.keep_checkpoints': whole(optional=True),  # at least 1; None: every one
    'training.profile_steps': whole(0),  # 0: no profile
    'eval.batch_size': whole(),
    'eval.num_clips': whole(),
    'mesh.fsdp': whole(),
    'mesh.fsdp_min_size': whole(0),
}


def _check_pattern_field(name: str, patterns) -> None:
  """ConfigError unless `patterns` (config field `name`) is a tuple of regular
  expressions."""
  if not isinstance(patterns, (tuple, list)) or not all(isinstance(p, str) for p in patterns):
    raise ConfigError(f'{name}={patterns!r} is not a tuple of regular expressions '
                      f"(parameter-name patterns, e.g. ('bias$',))")
  for pattern in patterns:
    try:
      re.compile(pattern)
    except re.error as e:
      raise ConfigError(f'{name} pattern {pattern!r} is not a regular expression: {e}'
                        ) from None


# The training fields that hold regular expressions over parameter names
# (`vivit.optim`: checked against the model's names when the optimiser starts).
PATTERN_FIELDS = ('weight_decay_exclude', 'freeze')


def check_accumulation(batch_size: int, accumulation: int, group) -> int:
  """The micro-batch size of `training.grad_accumulation`; ConfigError unless the
  batch splits into that many micro-batches of whole clipping groups."""
  if batch_size % accumulation:
    raise ConfigError(f'training.grad_accumulation={accumulation} does not divide '
                      f'training.batch_size={batch_size}')
  micro = batch_size // accumulation
  if accumulation > 1 and group and micro % group:
    raise ConfigError(f'training.grad_accumulation={accumulation} splits the batch of '
                      f'{batch_size} into micro-batches of {micro}, not whole groups of '
                      f'training.grad_clip_group={group}')
  return micro


def check_config(config: ml_collections.ConfigDict) -> None:
  """ConfigError naming the first numeric field no run can use (nan, out of range,
  not a whole number; see FIELD_RANGES), or pattern field that is not a tuple of
  regular expressions, and what it allows: before a run reads any,
  so that none fails later with a traceback (a zero `log_every`) or silently."""
  for name, allowed in FIELD_RANGES.items():
    value = config
    for key in name.split('.'):
      value = value[key]
    allowed.check(name, value)
  for field in PATTERN_FIELDS:
    _check_pattern_field(f'training.{field}', config.training[field])
  loggers.check_names(config.training.loggers)
  training = config.training
  check_accumulation(training.batch_size, training.grad_accumulation,
                     training.grad_clip_group if training.grad_clip else None)
  if config.eval.num_crops not in (1, 3):
    raise ConfigError(f'eval.num_crops={config.eval.num_crops!r} is not 1 or 3')
  dataset = config.dataset
  if dataset.crop_size and dataset.min_resize and dataset.min_resize < dataset.crop_size:
    raise ConfigError(f'dataset.min_resize={dataset.min_resize} is smaller than '
                      f'dataset.crop_size={dataset.crop_size}: crops are cut from frames '
                      f'whose short side is min_resize')
  jitter = dataset.scale_jitter
  if not (isinstance(jitter, (tuple, list)) and len(jitter) == 2
          and all(finite(0, above=True).admits(f) for f in jitter)
          and jitter[0] <= jitter[1]):
    raise ConfigError(f'dataset.scale_jitter={jitter!r} is not (low, high) with '
                      f'0 < low <= high (scale factors, e.g. (0.9, 1.33))')
