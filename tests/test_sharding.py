"""Sharding (`vivit.sharding`): which axis FSDP splits, and the prefetch of batches
onto the devices."""
import jax
import numpy as np

from vivit import sharding
from vivit.recipes import base_config


def test_fsdp_splits_the_largest_divisible_axis_of_large_enough_params():
  assert sharding.fsdp_axis((16, 32), 2, min_size=0) == 1
  assert sharding.fsdp_axis((16, 32), 8, min_size=0) == 1
  assert sharding.fsdp_axis((3, 16, 5), 4, min_size=0) == 1
  assert sharding.fsdp_axis((3, 5), 2, min_size=0) is None  # nothing divisible
  assert sharding.fsdp_axis((768,), 8, min_size=2 ** 12) is None  # LayerNorm scale: replicated
  assert sharding.fsdp_axis((768, 3072), 8, min_size=2 ** 12) == 1
  assert sharding.fsdp_axis((16, 32), 1, min_size=0) is None


def test_prefetch_keeps_order_and_reads_a_bounded_number_ahead():
  pulled = []

  def host_batches():
    for i in range(5):
      pulled.append(i)
      yield {'video': np.full((2, 3), i, np.uint8), 'label': np.array([i, i])}
  mesh = sharding.make_mesh(base_config().mesh)
  batches = sharding.prefetch(host_batches(), sharding.batch_sharding(mesh), size=2,
                              keys=('video',))
  first = next(batches)
  assert pulled == [0, 1, 2]  # the one handed out and two in flight
  assert isinstance(first['video'], jax.Array) and first['video'].dtype == np.uint8
  assert isinstance(first['label'], np.ndarray)
  rest = list(batches)
  assert [int(b['video'][0, 0]) for b in [first] + rest] == [0, 1, 2, 3, 4]
