"""ViViT-L/16x2 factorised encoder (24 + 4 layers) on Something-Something v2 (paper:
65.4 top-1). Flipped as scenic's recipe does, although some labels say left or right
(`--config.dataset.flip=False` to keep them true)."""
from vivit.recipes import SSV2_AUGMENT, paper_config


def get_config():
  return paper_config('L/16x2-FE', 'ssv2', 174, learning_rate=0.4, num_epochs=35,
                      stride=1, min_resize=288, crop_size=256, augment=SSV2_AUGMENT,
                      test_split='validation',  # the test set has no labels
                      label_smoothing=0.3, mixup=0.3, stochastic_depth=0.3,
                      temporal_layers=4)
