"""The optimiser (`vivit.optim`): learning-rate schedules, optimisers and clipping."""
import numpy as np
import optax
import pytest

from helpers import training_config
from vivit import optim


def test_schedule_and_optimizer():
  training = training_config(learning_rate=0.1, schedule='cosine', optimizer='sgd',
                             momentum=0.9, weight_decay=0.0, grad_clip=1.0,
                             grad_clip_group=None)
  _, schedule = optim.make_optimizer(training, total_steps=100, warmup_steps=10)
  np.testing.assert_allclose([schedule(0), schedule(5), schedule(10), schedule(100)],
                             [0.0, 0.05, 0.1, 0.0], atol=1e-7)
  assert 0.04 < schedule(55) < 0.06
  training.schedule = 'constant'
  _, schedule = optim.make_optimizer(training, 100, 10)
  np.testing.assert_allclose([schedule(5), schedule(50)], [0.05, 0.1], atol=1e-7)
  training.optimizer = 'lamb'
  with pytest.raises(ValueError, match="unknown training.optimizer 'lamb'"):
    optim.make_optimizer(training, 100, 10)
  # Clipping: a huge gradient moves SGD by at most lr * 1.
  training.update(optimizer='sgd', momentum=0.0, schedule='constant')
  optimizer, _ = optim.make_optimizer(training, 100, 0)
  params = {'w': np.zeros(4, np.float32)}
  updates, _ = optimizer.update({'w': np.full(4, 1e6, np.float32)}, optimizer.init(params),
                                params)
  np.testing.assert_allclose(optax.global_norm(updates), 0.1, rtol=1e-5)
