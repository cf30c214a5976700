"""Device mesh and shardings: one code path for 1 CPU, N GPUs or a multi-host pod.

The mesh has a `data` axis (batch) and an `fsdp` axis (batch too, and parameters and
optimiser state sharded along their largest divisible dimension).
"""
import collections
from typing import Dict, Iterator, Optional, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')


def make_mesh(mesh_config: ml_collections.ConfigDict) -> Mesh:
  devices = jax.device_count()
  fsdp = mesh_config.get('fsdp', 1)
  if devices % fsdp:
    raise ValueError(f'mesh.fsdp={fsdp} does not divide the {devices} devices')
  # Auto axes: the compiler propagates shardings from the inputs (GSPMD).
  return jax.make_mesh((devices // fsdp, fsdp), BATCH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_sharding(mesh: Mesh, shape) -> NamedSharding:
  """FSDP: the largest dimension divisible by the `fsdp` axis is split over it."""
  fsdp = mesh.shape['fsdp']
  if fsdp == 1 or not shape:
    return replicated(mesh)
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % fsdp == 0:
      spec = [None] * len(shape)
      spec[axis] = 'fsdp'
      return NamedSharding(mesh, P(*spec))
  return replicated(mesh)


def tree_shardings(mesh: Mesh, abstract_tree):
  """Shardings for every array of a tree of `ShapeDtypeStruct`s."""
  return jax.tree_util.tree_map(lambda x: param_sharding(mesh, x.shape), abstract_tree)


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  if global_batch % devices:
    raise ValueError(f'batch size {global_batch} is not divisible by the {devices} devices '
                     f'of the mesh; use a multiple of {devices}')
  if global_batch % jax.process_count():
    raise ValueError(f'batch size {global_batch} is not divisible by the '
                     f'{jax.process_count()} processes')


def global_batch(batch, sharding: NamedSharding):
  """Host-local numpy arrays -> one global jax.Array per entry."""
  return jax.tree_util.tree_map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def prefetch(batches: Iterator[Dict[str, np.ndarray]], sharding: NamedSharding,
             size: int = 2, keys: Optional[Sequence[str]] = None) -> Iterator[Dict]:
  """Host batches with their `keys` entries (default: all) made global arrays on the
  devices, `size` batches ahead: transfers are asynchronous, so the next batches
  cross while the current step runs. Other entries stay host-local numpy."""
  in_flight = collections.deque()
  for batch in batches:
    on_device = {k: v for k, v in batch.items() if keys is None or k in keys}
    in_flight.append({**batch, **global_batch(on_device, sharding)})
    if len(in_flight) > size:
      yield in_flight.popleft()
  yield from in_flight
