"""ViViT-L/16x2 factorised encoder (24 + 4 layers) on Epic-Kitchens-100: 43.6 action
accuracy. Two heads in one output: the noun then the verb logits (scenic's order;
their sizes come from the dataset: 300 and 97), the sum of both losses; evaluation
reports noun, verb and action (both right) accuracy."""
from vivit.recipes import EPIC_AUGMENT, paper_config


def get_config():
  return paper_config('L/16x2-FE', 'epic_kitchens_100', None, learning_rate=0.5,
                      num_epochs=50, stride=1, test_split='validation',
                      label_smoothing=0.2, mixup=0.1,
                      stochastic_depth=0.2, augment=EPIC_AUGMENT, temporal_layers=4,
                      label_key=('noun', 'verb'))
