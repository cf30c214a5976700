"""Parameter + optimiser-state memory per device under FSDP, from the shapes.

  python experiments/memory_table.py                 # B, L, H; fsdp 1, 8, 64
  python experiments/memory_table.py --models B/16x2-FE,L/16x2-FE --fsdp 1,16

Shapes come from `jax.eval_shape` of the model's init and the optimiser's init
(nothing is allocated); each parameter is split the way `vivit.sharding` splits
it (its largest dimension divisible by the FSDP group, parameters under
`mesh.fsdp_min_size` replicated). Activations are not included: they depend on
the batch per device, the frames and `model.remat`.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def state_bytes_per_device(model: str, frames: int, fsdp: int, optimizer: str) -> dict:
  """{'params', 'optimizer'}: bytes per device of model `model` (e.g. 'B/16x2')."""
  import jax
  from vivit import sharding
  from vivit.models import get_model_config, init_params
  from vivit.optim import make_optimizer
  from vivit.recipes import base_config
  config = base_config()
  config.training.optimizer = optimizer
  model_config = get_model_config(model, num_classes=400, input_size=(frames, 224, 224))
  tx, _ = make_optimizer(config.training, 1000, 10)
  params = jax.eval_shape(lambda: init_params(model_config, jax.random.PRNGKey(0)))
  min_size = config.mesh.fsdp_min_size
  opt_state = jax.eval_shape(tx.init, params)

  def per_device(tree):
    total = 0
    for leaf in jax.tree_util.tree_leaves(tree):
      size = int(np.prod(leaf.shape)) * leaf.dtype.itemsize
      split = sharding.fsdp_axis(leaf.shape, fsdp, min_size) is not None
      total += size // fsdp if split else size
    return total
  return {'params': per_device(params), 'optimizer': per_device(opt_state)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--models', default='B/16x2,L/16x2,H/14x2')
  parser.add_argument('--frames', type=int, default=32)
  parser.add_argument('--fsdp', default='1,8,64')
  parser.add_argument('--optimizer', default='sgd', choices=('sgd', 'adamw'))
  args = parser.parse_args(argv)
  groups = [int(f) for f in args.fsdp.split(',')]
  print(f'Parameters + {args.optimizer} state per device, MiB (params + optimiser), '
        f'float32, {args.frames}x224x224 clips:\n')
  print('| model | ' + ' | '.join(f'fsdp {g}' for g in groups) + ' |')
  print('|---|' + '---|' * len(groups))
  for model in args.models.split(','):
    cells = []
    for group in groups:
      sizes = state_bytes_per_device(model, args.frames, group, args.optimizer)
      cells.append(f"{(sizes['params'] + sizes['optimizer']) / 2 ** 20:,.0f} "
                   f"({sizes['params'] / 2 ** 20:,.0f} + {sizes['optimizer'] / 2 ** 20:,.0f})")
    print(f'| ViViT-{model} | ' + ' | '.join(cells) + ' |')
  return 0


if __name__ == '__main__':
  sys.exit(main())
