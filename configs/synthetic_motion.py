"""A small ViViT on the embedded `synthetic_motion` dataset (trains in minutes on CPU).

Pick the variant with the config argument (default model 1), e.g.
  --config configs/synthetic_motion.py:factorised_encoder
Variants: spatio_temporal, factorised_encoder, factorised_self_attention,
factorised_dot_product.
"""
import ml_collections

from vivit.models import variants
from vivit.recipes import base_config, model_config


def get_config(variant: str = variants.SPATIO_TEMPORAL) -> ml_collections.ConfigDict:
  row = variants.get(variant)
  config = base_config()
  config.dataset.update(name='synthetic_motion', num_frames=8, min_resize=32, crop_size=32,
                        scale_jitter=(1.0, 1.25),
                        flip=False)  # flipping swaps move_left and move_right
  config.model = model_config(f'Ti/8x2{row.suffix}', 10, hidden_size=64, num_heads=4,
                              num_layers=4, mlp_dim=128, input_size=(8, 32, 32),
                              tubelet=(4, 8, 8),
                              tubelet_init='lecun_normal')  # from scratch: all frames
  config.model.temporal.update(num_layers=2, num_heads=4, mlp_dim=128)
  config.init_from.from_scratch = True
  # Model 1 sees every space-time token at once. The others learn this dataset's
  # directions more slowly, so train 2.5x the epochs: model 2 pools each time step to
  # one vector before time is seen (at 32 epochs still underfitting: 92 % train and
  # validation top-1), models 3 and 4 pool by global average (no CLS token).
  config.training.update(
      batch_size=32, num_epochs=32.0 if row.paper_model == 1 else 80.0,
      warmup_epochs=0.5,
      optimizer='adamw', learning_rate=1e-3, weight_decay=1e-4, grad_clip_group=None,
      eval_every=1000, keep_checkpoints=2)
  config.eval.update(batch_size=32, num_clips=2, num_crops=3)
  return config
