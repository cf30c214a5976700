"""ViViT-B/16x2 factorised encoder (12 + 4 layers) on Kinetics-400: 78.4 top-1."""
from vivit.recipes import paper_config


def get_config():
  return paper_config('B/16x2-FE', 'kinetics400', 400, learning_rate=0.05, num_epochs=30,
                      temporal_layers=4)
