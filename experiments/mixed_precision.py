"""Mixed precision as a recipe: `model.dtype=bfloat16` against float32, same run.

Trains the README's main job (`configs/synthetic_motion.py`, model 1 unless
`--variant`) twice, in float32 and with `--config.model.dtype=bfloat16`, then
evaluates both with the multi-view test. Checks that the bfloat16 run computes in
bfloat16 (the output dtype of each matmul of the forward pass) while its saved
params and optimiser state stay float32, and prints both top-1s and their difference (the recipe's claim: within 1
point). Writes experiments/results/mixed_precision_<backend>.json.

  python experiments/mixed_precision.py
  python experiments/mixed_precision.py --variant factorised_encoder --workdir /tmp/mp
"""
import argparse
import collections
import json
import os
import re
import tempfile
import time


def run(variant: str, dtype: str, workdir: str) -> dict:
  import jax
  import numpy as np
  import orbax.checkpoint as ocp
  from vivit import evaluate, train
  from vivit.models import build_model
  from vivit.recipes import load_config
  config_path = os.path.join(os.path.dirname(__file__), '..', 'configs', 'synthetic_motion.py')

  def config():
    loaded = load_config(f'{config_path}:{variant}')
    loaded.model.dtype = dtype
    return loaded
  start = time.time()
  trained = train.train_and_evaluate(config(), workdir)
  seconds = time.time() - start
  tested = evaluate.run(config(), workdir)
  # What a bfloat16 run keeps: the latest train state, as saved.
  step = max(int(d) for d in os.listdir(os.path.join(workdir, 'checkpoints')) if d.isdigit())
  with ocp.StandardCheckpointer() as checkpointer:
    state = checkpointer.restore(os.path.join(workdir, 'checkpoints', str(step), 'default'))
  stored = sorted({str(np.asarray(x).dtype) for x in jax.tree_util.tree_leaves(state)
                   if np.asarray(x).dtype.kind == 'f'})
  # What it computes in: the output dtype of every matmul of the forward pass.
  model = build_model(config().model)
  frames, size, _ = config().model.input_size
  jaxpr = str(jax.make_jaxpr(lambda p, x: model.apply({'params': p}, x))(
      trained['params'], np.zeros((1, frames, size, size, 3), np.uint8)))
  matmuls = re.findall(r':(\w+)\[[^\]]*\] = dot_general', jaxpr)
  return {'dtype': dtype, 'validation_top1': trained['val_top1'], 'test_top1': tested['top1'],
          'train_seconds': round(seconds, 1), 'stored_float_dtypes': stored,
          'matmul_dtypes': dict(collections.Counter(matmuls))}


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  from vivit.models import variants
  parser.add_argument('--variant', default=variants.SPATIO_TEMPORAL)
  parser.add_argument('--workdir', help='where the two runs go (default: a temporary '
                      'directory)')
  args = parser.parse_args()
  import jax
  root = args.workdir or tempfile.mkdtemp(prefix='mixed_precision_')
  results = [run(args.variant, dtype, os.path.join(root, dtype))
             for dtype in ('float32', 'bfloat16')]
  for r in results:
    matmuls = ', '.join(f'{n} in {t}' for t, n in r['matmul_dtypes'].items())
    print(f"{r['dtype']:>9}: validation top-1 {r['validation_top1']:.4f}, test top-1 "
          f"{r['test_top1']:.4f}, trained in {r['train_seconds']:.0f}s; matmuls "
          f"{matmuls}; saved state {', '.join(r['stored_float_dtypes'])}")
  gap = 100 * (results[1]['test_top1'] - results[0]['test_top1'])
  print(f'bfloat16 - float32 test top-1: {gap:+.2f} points')
  out = os.path.join(os.path.dirname(__file__), 'results',
                     f'mixed_precision_{jax.default_backend()}.json')
  with open(out, 'w') as f:
    json.dump({'variant': args.variant, 'device': jax.devices()[0].device_kind,
               'runs': results, 'test_top1_gap_points': round(gap, 2)}, f, indent=1)
  print(f'wrote {out}')


if __name__ == '__main__':
  main()
