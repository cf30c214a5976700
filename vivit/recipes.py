"""Config files: loading them, and the paper's recipes they share.

`load_config('configs/X.py:arg')` reads any config file outside the command line.
`paper_config(...)` fills every field the training loop reads with the paper's
recipe (scenic's released configs); each file under `configs/<dataset>/` states only
what its row of the recipe table changes.
"""
import importlib.util
from typing import Optional, Sequence

import ml_collections
from ml_collections import config_dict

from vivit.models import get_model_config


def load_config(path: str):
  """`get_config()` of a Python config file (scenic's or ours); `FILE:ARG` passes
  ARG to `get_config`, as `--config FILE:ARG` does."""
  path, _, arg = path.partition(':')
  spec = importlib.util.spec_from_file_location('loaded_config', path)
  if spec is None or spec.loader is None:
    raise FileNotFoundError(f'cannot load a config from {path}')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


# Augmentation per recipe, as scenic's ViViT configs set it
# (scenic/projects/vivit/configs/<dataset>/*.py, `dataset_configs.augmentation_params`):
# scale jitter 0.9-1.33 with independent height and width factors (`do_jitter_scale`,
# `prob_scale_jitter=1`), horizontal flips (DMVR's default, SSv2 included),
# colour augmentation with probability 0.8 and colour drop 0.1 on Kinetics
# (`do_color_augment`, `prob_color_augment`, `prob_color_drop`), none but
# RandAugment on SSv2 and Epic-Kitchens (`do_rand_augment`).
KINETICS_AUGMENT = dict(scale_jitter=(0.9, 1.33), flip=True, colour_augment=0.8,
                        colour_drop=0.1, randaugment=config_dict.placeholder(tuple))
# ^ kinetics400/vivit_base_k400.py
SSV2_AUGMENT = dict(scale_jitter=(0.9, 1.33), flip=True, colour_augment=0.0,
                    colour_drop=0.0, randaugment=(2, 20))
# ^ something_something_v2/vivit_large_factorised_encoder.py
EPIC_AUGMENT = dict(scale_jitter=(0.9, 1.33), flip=True, colour_augment=0.0,
                    colour_drop=0.0, randaugment=(2, 15))
# ^ epic_kitchens/vivit_large_factorised_encoder.py


def paper_config(model_name: str, dataset: str, num_classes: int, *, learning_rate: float,
                 num_epochs: float, stride: int = 2, min_resize: int = 256,
                 crop_size: int = 224, augment=None, test_split: str = 'test',
                 label_smoothing: float = 0.0,
                 mixup: float = 0.0, stochastic_depth: float = 0.0,
                 temporal_layers: Optional[int] = None,
                 label_key: Sequence[str] = ('label',),
                 class_splits: Optional[Sequence[int]] = None) -> ml_collections.ConfigDict:
  """32 frames, tubelet 16x16x2, momentum SGD, cosine decay with 2.5 warm-up epochs,
  grad-norm clip 1 per group of 8 examples, batch 64, no weight decay, no dropout,
  4x3-view test; `augment` one of the *_AUGMENT recipes (default Kinetics')."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = ml_collections.ConfigDict(dict(
      # format 'dmvr': data_dir is a pattern of scenic/DMVR tfrecords, e.g.
      # '/data/k400/{split}.tfrecord@1024' (see vivit.input.dmvr).
      name=dataset, format='tfds', data_dir=config_dict.placeholder(str),
      label_key=tuple(label_key), train_split='train',
      eval_split='validation', test_split=test_split, num_frames=32, stride=stride,
      min_resize=min_resize, crop_size=crop_size, **(augment or KINETICS_AUGMENT),
      num_threads=0,
      shuffle_buffer=1024,  # 'dmvr' streams only: serialized examples
      class_splits=(tuple(class_splits) if class_splits
                    else config_dict.placeholder(tuple))))
  config.model = get_model_config(model_name, num_classes=num_classes,
                                  input_size=(32, crop_size, crop_size),
                                  stochastic_depth=stochastic_depth)
  if temporal_layers is not None:
    config.model.temporal.num_layers = temporal_layers
  config.training = ml_collections.ConfigDict(dict(
      batch_size=64, num_epochs=float(num_epochs), num_steps=config_dict.placeholder(int),
      warmup_epochs=2.5, optimizer='sgd', learning_rate=learning_rate, momentum=0.9,
      weight_decay=0.0, schedule='cosine', grad_clip=1.0,
      # Clip per 8 examples as scenic does per device (its configs: batch 64 on one
      # 8-core TPU host), so the result does not depend on the devices used.
      grad_clip_group=8, label_smoothing=label_smoothing,
      mixup=mixup, log_every=100, eval_every=5000, checkpoint_every=1000,
      keep_checkpoints=3,
      nonfinite='stop'))  # or 'skip': steps with a non-finite update are skipped
  config.eval = ml_collections.ConfigDict(dict(batch_size=64, num_clips=4, num_crops=3))
  config.mesh = ml_collections.ConfigDict(dict(
      fsdp=1,  # devices per FSDP group; the rest of the mesh is data-parallel
      fsdp_min_size=2 ** 12))  # smaller parameters stay replicated
  config.init_from = init_from_config()
  return config


def init_from_config(model_from_checkpoint: bool = False) -> ml_collections.ConfigDict:
  """`config.init_from` (see `vivit.initialise`): the paper's ImageNet-21k ViT
  initialisation rules, used when `path` is a ViT."""
  return ml_collections.ConfigDict(dict(
      path=config_dict.placeholder(str),
      format=config_dict.placeholder(str),  # vit, scenic, transformers, vivit; None: guessed
      kernel_init='central_frame', posemb='tile', temporal_attention_init='zeros',
      restore_head=False,
      scenic_config=config_dict.placeholder(str),  # format scenic: its config file
      model_from_checkpoint=model_from_checkpoint,
      # These recipes are fine-tuning recipes: without `path`, training refuses
      # unless random initialisation is asked for.
      from_scratch=False))
