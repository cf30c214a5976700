"""ViViT-L/16x2 factorised encoder (24 + 24 layers) on Kinetics-600: 81.6 top-1."""
from vivit.recipes import paper_config


def get_config():
  return paper_config('L/16x2-FE', 'kinetics600', 600, learning_rate=0.05, num_epochs=30,
                      temporal_layers=24)
