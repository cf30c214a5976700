"""A small ViViT on the embedded `synthetic_motion` dataset (trains in minutes on CPU).

Pick the variant with the config argument (default model 1):
  --config configs/synthetic_motion.py:factorised_encoder
Variants: spatio_temporal, factorised_encoder, factorised_self_attention,
factorised_dot_product.
"""
import ml_collections
from ml_collections import config_dict

from vivit.models import get_model_config

SUFFIX = {'spatio_temporal': '', 'factorised_encoder': '-FE',
          'factorised_self_attention': '-FSA', 'factorised_dot_product': '-FDP'}


def get_config(variant: str = 'spatio_temporal') -> ml_collections.ConfigDict:
  if variant not in SUFFIX:
    raise ValueError(f'unknown variant {variant!r}; expected one of {", ".join(SUFFIX)}')
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = ml_collections.ConfigDict(dict(
      name='synthetic_motion', format='tfds', data_dir=config_dict.placeholder(str),
      label_key=('label',), train_split='train', eval_split='validation', test_split='test',
      num_frames=8, stride=2, min_resize=32, crop_size=32, scale_jitter=(1.0, 1.25),
      flip=False,  # flipping swaps move_left and move_right
      colour_augment=0.8, colour_drop=0.1,  # scenic's Kinetics colour augmentation
      num_threads=0,  # 0: one input thread per core
      shuffle_buffer=1024,  # format 'dmvr' only: serialized examples
      randaugment=config_dict.placeholder(tuple),  # (num_layers, magnitude)
      shuffle_frames=False))  # True destroys temporal order (experiments/shuffled_frames.py)

  config.model = get_model_config(f'Ti/8x2{SUFFIX[variant]}', hidden_size=64, num_heads=4,
                                  num_layers=4, mlp_dim=128, num_classes=10,
                                  input_size=(8, 32, 32), tubelet=(4, 8, 8),
                                  tubelet_init='lecun_normal')  # from scratch: all frames
  config.model.temporal.update(num_layers=2, num_heads=4, mlp_dim=128)

  # Models 3 and 4 pool by global average (no CLS token), which learns this
  # dataset more slowly: they get 2.5x the epochs.
  epochs = 80.0 if variant in ('factorised_self_attention', 'factorised_dot_product') else 32.0
  config.training = ml_collections.ConfigDict(dict(
      batch_size=32, num_epochs=epochs, num_steps=config_dict.placeholder(int),
      warmup_epochs=0.5, optimizer='adamw', learning_rate=1e-3, momentum=0.9,
      weight_decay=1e-4, schedule='cosine', grad_clip=1.0,
      grad_clip_group=config_dict.placeholder(int),  # None: clip the batch's gradient
      label_smoothing=0.0,
      mixup=0.0, log_every=100, eval_every=1000, checkpoint_every=1000, keep_checkpoints=2,
      nonfinite='stop'))  # or 'skip': steps with a non-finite update are skipped

  config.eval = ml_collections.ConfigDict(dict(batch_size=32, num_clips=2, num_crops=3))
  config.mesh = ml_collections.ConfigDict(dict(
      fsdp=1,  # devices per FSDP group; the rest of the mesh is data-parallel
      fsdp_min_size=2 ** 12))  # smaller parameters stay replicated
  return config
