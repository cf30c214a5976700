"""ViViT-B/16x2 (model 1) on Kinetics-400: scenic reports 79.9 top-1 (4x3 views)."""
from vivit.recipes import paper_config


def get_config():
  return paper_config('B/16x2', 'kinetics400', 400, learning_rate=0.1, num_epochs=30)
