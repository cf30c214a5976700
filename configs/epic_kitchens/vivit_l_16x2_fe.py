"""ViViT-L/16x2 factorised encoder (24 + 4 layers) on Epic-Kitchens-100: 43.6 action
accuracy. One output of 97 verb + 300 noun logits (`dataset.class_splits`)."""
from vivit.recipes import paper_config


def get_config():
  return paper_config('L/16x2-FE', 'epic_kitchens_100', 97 + 300, learning_rate=0.5,
                      num_epochs=50, stride=1, test_split='validation',
                      label_smoothing=0.2, mixup=0.1,
                      stochastic_depth=0.2, randaugment=(2, 15), temporal_layers=4,
                      class_splits=(97, 300))
