"""Fine-tune a checkpoint on a prepared dataset (yours: `prepare video_folder --name mine`).

  python -m vivit.train --config configs/finetune.py --workdir runs/ft \\
      --config.init_from.path=/ckpt/vivit_b_k400 \\
      --config.dataset.name=video_folder/mine --config.dataset.data_dir=/data/tfds

The model is the checkpoint's (ViViT checkpoints: a training workdir, a
`vivit.convert` params directory, an HF ViViT directory, or a scenic one with
`init_from.scenic_config`) with a new head for the dataset's classes; frames and
crop are the checkpoint's unless `dataset.num_frames` / `dataset.crop_size` are set,
and then its position embeddings are resized. From a 2-D ViT (`.npz` or HF ViT
directory) the model is `config.model` below (`--config.model.*` to change it);
other checkpoints bring their architecture and keep only its training fields
(dropout, stochastic depth, dtype, remat).
"""
import ml_collections

from vivit.recipes import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config()
  config.dataset.test_split = 'validation'
  config.init_from.model_from_checkpoint = True
  config.training.update(
      batch_size=16, num_epochs=10.0, warmup_epochs=1.0, learning_rate=0.01,
      grad_clip_group=None, label_smoothing=0.1, log_every=50, eval_every=500,
      checkpoint_every=500, keep_checkpoints=2)
  config.eval.batch_size = 16
  return config
