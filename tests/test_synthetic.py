"""The embedded synthetic_motion dataset (vivit.datasets.synthetic): its clips."""
import numpy as np

from vivit.datasets import synthetic


def test_synthetic_clips_are_deterministic_and_pairs_are_time_reversals():
  a = synthetic.render_clip(4, np.random.default_rng(0))
  assert a.shape == (synthetic.NUM_FRAMES, synthetic.SIZE, synthetic.SIZE, 3)
  assert a.dtype == np.uint8
  np.testing.assert_array_equal(a, synthetic.render_clip(4, np.random.default_rng(0)))
  # Class 2k+1 is class 2k played backwards: the same frames, only their order differs.
  for forward in range(0, len(synthetic.CLASS_NAMES), 2):
    for seed in range(5):
      ahead = synthetic._trajectory(forward, np.random.default_rng(seed))
      back = synthetic._trajectory(forward + 1, np.random.default_rng(seed))
      for x, y in zip(ahead, back):
        np.testing.assert_allclose(x[::-1], y)
      assert max(np.abs(x[0] - x[-1]).max() for x in ahead) >= 1  # it does change
