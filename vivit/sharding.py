"""Device mesh and shardings: one code path for 1 CPU, N GPUs or a multi-host pod.

The mesh has a `data` axis (batch) and an `fsdp` axis (batch too, and parameters and
optimiser state sharded along their largest divisible dimension).
"""
import collections
import os
from typing import Dict, Iterator, Optional, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vivit.errors import ConfigError

BATCH_AXES = ('data', 'fsdp')
# How `vivit.launch` tells the processes it starts who they are.
NUM_PROCESSES_ENV, PROCESS_ID_ENV = 'VIVIT_NUM_PROCESSES', 'VIVIT_PROCESS_ID'


def initialize_distributed() -> None:
  """`jax.distributed.initialize()`: from `vivit.launch`'s environment when it started
  this process, else by JAX's cluster detection (SLURM, TPU pods, Open MPI, ...)."""
  if os.environ.get(NUM_PROCESSES_ENV):
    jax.distributed.initialize(num_processes=int(os.environ[NUM_PROCESSES_ENV]),
                               process_id=int(os.environ[PROCESS_ID_ENV]),
                               cluster_detection_method='deactivate')
  else:
    jax.distributed.initialize()


def make_mesh(mesh_config: ml_collections.ConfigDict) -> Mesh:
  devices = jax.device_count()
  fsdp = mesh_config.fsdp
  if devices % fsdp:
    raise ConfigError(f'mesh.fsdp={fsdp} does not divide the {devices} devices')
  # Auto axes: the compiler propagates shardings from the inputs (GSPMD).
  return jax.make_mesh((devices // fsdp, fsdp), BATCH_AXES,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every device."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_axis(shape, fsdp: int, min_size: int) -> Optional[int]:
  """The axis of a parameter of `shape` that FSDP over `fsdp` devices splits: its
  largest dimension divisible by `fsdp`, for parameters of at least `min_size`
  elements; None: replicated."""
  if fsdp == 1 or not shape or np.prod(shape) < min_size:
    return None
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % fsdp == 0:
      return int(axis)
  return None


def param_sharding(mesh: Mesh, shape, min_size: int) -> NamedSharding:
  """FSDP: `fsdp_axis` split over the mesh's `fsdp` axis."""
  axis = fsdp_axis(shape, mesh.shape['fsdp'], min_size)
  if axis is None:
    return replicated(mesh)
  spec = [None] * len(shape)
  spec[axis] = 'fsdp'
  return NamedSharding(mesh, P(*spec))


def tree_shardings(mesh: Mesh, abstract_tree, min_size: int):
  """Shardings for every array of a tree of `ShapeDtypeStruct`s."""
  return jax.tree_util.tree_map(lambda x: param_sharding(mesh, x.shape, min_size),
                                abstract_tree)


def sharded_shapes(mesh: Mesh, abstract_tree, min_size: int):
  """`abstract_tree`'s `ShapeDtypeStruct`s with their shardings on `mesh`: the target
  of a checkpoint restore, which then places every shard where this mesh wants it,
  whatever the topology that saved it."""
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=param_sharding(mesh, x.shape, min_size)),
      abstract_tree)


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
  devices = mesh.devices.size
  if global_batch % devices:
    raise ConfigError(f'batch size {global_batch} is not divisible by the {devices} devices '
                      f'of the mesh; use a multiple of {devices}')
  if global_batch % jax.process_count():
    raise ConfigError(f'batch size {global_batch} is not divisible by the '
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
