"""Fine-tune as VideoMAE fine-tunes ViT-B on Kinetics-400 (Tong et al., NeurIPS 2022).

  python -m vivit.train --config configs/finetune_modern.py --workdir runs/ft \\
      --config.init_from.path=/ckpt/vivit_b_k400 \\
      --config.dataset.name=video_folder/mine --config.dataset.data_dir=/data/tfds

`configs/finetune.py` (the checkpoint's model with a new head, your dataset) with
VideoMAE's optimisation, from its released code (MCG-NJU/VideoMAE):
`scripts/kinetics/videomae_vit_base_patch16_224_tubemasking_ratio_0.9_epoch_1600/
finetune.sh` for what it passes, `run_class_finetuning.py`'s argument defaults for
the rest, `optim_factory.py` for what is not decayed:

  AdamW, betas (0.9, 0.999)          finetune.sh --opt adamw --opt_betas 0.9 0.999
  lr 5e-4 x batch / 256              finetune.sh --lr 5e-4, scaled by the total batch
                                     / 256 in run_class_finetuning.py
  weight decay 0.05                  finetune.sh --weight_decay 0.05
  no decay: biases, LayerNorm        optim_factory.get_parameter_groups: 1-D params,
    scales, position embeddings,     names ending in .bias, model.no_weight_decay()
    CLS tokens                       = {pos_embed, cls_token}
  layer decay 0.75                   --layer_decay default
  stochastic depth 0.1               --drop_path default
  5 warm-up epochs, cosine, 75       --warmup_epochs default, step-wise cosine,
    epochs                           finetune.sh --epochs 75
  no gradient clipping               --clip_grad default None
  label smoothing 0.1, mixup 0.8     --smoothing, --mixup defaults
  RandAugment 4 ops at magnitude 7   --aa rand-m7-n4-mstd0.5-inc1 (timm's scale: 7 of
                                     10, as ours)
  5 x 3 test views                   finetune.sh --test_num_segment 5 --test_num_crop 3

What this library does otherwise: the cosine decays to 0, not to VideoMAE's min_lr
1e-6 x batch / 256; mixup only (VideoMAE switches between mixup 0.8 and CutMix 1.0),
no random erasing (--reprob 0.25), no repeated augmentation (--num_sample 2), no
magnitude noise in RandAugment (mstd0.5), and the crops are scale-jittered (the
base config's) rather than random-resized; the model's frames, stride and pooling are
the checkpoint's. VideoMAE trains with a total batch of 384 (6 x 64 GPUs); the batch
here is `configs/finetune.py`'s 16, the learning rate scaled to it by the linear
rule: set both together (`BASE_LEARNING_RATE * batch_size / 256`).
"""
import os

import ml_collections

from vivit.recipes import load_config

BASE_LEARNING_RATE = 5e-4  # per 256 examples a step
# Biases (attention biases are 2-D here: (heads, head dim)), LayerNorm scales (the
# only parameters named `scale`), position embeddings, CLS tokens (model 2: one per
# encoder). Each pattern matches a parameter of every variant.
NO_WEIGHT_DECAY = (r'(^|/)(bias|scale)$', r'(^|/)(pos_embedding|cls\w*)$')


def get_config() -> ml_collections.ConfigDict:
  config = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    'finetune.py'))
  config.dataset.update(colour_augment=0.0, colour_drop=0.0, randaugment=(4, 7))
  config.model.stochastic_depth = 0.1
  training = config.training
  training.update(
      optimizer='adamw', b1=0.9, b2=0.999,
      learning_rate=BASE_LEARNING_RATE * training.batch_size / 256,
      weight_decay=0.05, weight_decay_exclude=NO_WEIGHT_DECAY, layer_decay=0.75,
      num_epochs=75.0, warmup_epochs=5.0, schedule='cosine', grad_clip=0.0,  # no clipping
      label_smoothing=0.1, mixup=0.8)
  # VideoMAE reaches its batch of 384 with data parallelism (--update_freq 1) and
  # keeps its EMA off (--model_ema). Where 16 clips fit but 384 are wanted:
  # --config.training.batch_size=384 --config.training.grad_accumulation=24 (the
  # learning rate above follows batch_size); an EMA: --config.training.ema_decay=0.9999.
  training.update(grad_accumulation=1, ema_decay=None)
  config.eval.update(num_clips=5, num_crops=3)
  return config
