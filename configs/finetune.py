"""Fine-tune a checkpoint on a prepared dataset (yours: `prepare video_folder`).

  python -m vivit.train --config configs/finetune.py --workdir runs/ft \\
      --config.init_from.path=/ckpt/vivit_b_k400 \\
      --config.dataset.name=video_folder --config.dataset.data_dir=/data/tfds

The model is the checkpoint's (ViViT checkpoints: a training workdir, a
`vivit.convert` params directory, an HF ViViT directory, or a scenic one with
`init_from.scenic_config`) with a new head for the dataset's classes; frames and
crop are the checkpoint's unless `dataset.num_frames` / `dataset.crop_size` are set,
and then its position embeddings are resized. From a 2-D ViT (`.npz` or HF ViT
directory) the model is `config.model` below (`--config.model.*` to change it).
"""
import ml_collections
from ml_collections import config_dict

from vivit.models import get_model_config
from vivit.recipes import KINETICS_AUGMENT, init_from_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = ml_collections.ConfigDict(dict(
      name=config_dict.placeholder(str), format='tfds',
      data_dir=config_dict.placeholder(str), label_key=('label',), train_split='train',
      eval_split='validation', test_split='validation',
      # None: the checkpoint's frame count and crop; min_resize: crop * 256 / 224.
      num_frames=config_dict.placeholder(int), crop_size=config_dict.placeholder(int),
      min_resize=config_dict.placeholder(int), stride=2, **KINETICS_AUGMENT,
      num_threads=0, shuffle_buffer=1024, class_splits=config_dict.placeholder(tuple)))
  # Used as it is only for a 2-D ViT; other checkpoints bring their architecture
  # and keep only these training fields (dropout, stochastic depth, dtype, remat).
  config.model = get_model_config('B/16x2')
  config.model.num_classes = config_dict.placeholder(int)  # the dataset's
  config.init_from = init_from_config(model_from_checkpoint=True)
  config.training = ml_collections.ConfigDict(dict(
      batch_size=16, num_epochs=10.0, num_steps=config_dict.placeholder(int),
      warmup_epochs=1.0, optimizer='sgd', learning_rate=0.01, momentum=0.9,
      weight_decay=0.0, schedule='cosine', grad_clip=1.0,
      grad_clip_group=config_dict.placeholder(int),  # None: clip the batch's gradient
      label_smoothing=0.1,
      mixup=0.0, log_every=50, eval_every=500, checkpoint_every=500,
      keep_checkpoints=2,
      nonfinite='stop'))  # or 'skip': steps with a non-finite update are skipped
  config.eval = ml_collections.ConfigDict(dict(batch_size=16, num_clips=4, num_crops=3))
  config.mesh = ml_collections.ConfigDict(dict(
      fsdp=1,  # devices per FSDP group; the rest of the mesh is data-parallel
      fsdp_min_size=2 ** 12))  # smaller parameters stay replicated
  return config
