"""What `vivit-benchmark` leaves out: the training loop against its bare step, and
forward time and memory against the frame count, beside its per-variant table.

  python experiments/benchmark.py --out runs/benchmark --sweep 8,16,32,64 --variants 1,2,3,4
  python experiments/benchmark.py --out runs/quick --model S/16x2 --frames 8 \\
      --resolution 64 --loop-steps 0

Runs `vivit-benchmark` (`vivit.benchmark`: each variant's forward and train step,
clips/s, FLOPs, MFU, peak memory, the attention that ran, HF transformers beside
model 1) with every argument this script does not take, into OUT/benchmark.json and
.md; then, each in a process of its own, the training loop's steps/s on the embedded
dataset (configs/synthetic_motion.py) beside its bare train step (input stalls), and
with `--sweep` the forward of each variant at each frame count (`vivit.benchmark`'s
measurement). Writes OUT/experiment.json, OUT/experiment.md and, with a sweep,
OUT/frames.png.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's vivit, whichever one pip installed


def _timed(fn, repeats: int) -> float:
  fn()  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def measure_loop(spec):
  """Steps/s of the training loop (`vivit.train`: input pipeline, prefetch, step,
  logging) on the embedded dataset with configs/synthetic_motion.py, beside the
  same train step called on one batch already on the device: the gap is input
  stalls."""
  import jax
  import jax.numpy as jnp
  from vivit import task, train
  from vivit.input import pipeline
  from vivit.models import build_model, init_params
  from vivit.optim import make_optimizer
  from vivit.recipes import load_config
  from vivit.step import TrainState, train_step
  config = load_config(os.path.join(REPO, 'configs', 'synthetic_motion.py'))
  steps, window = spec['steps'], max(1, spec['steps'] // 3)
  config.dataset.data_dir = spec.get('data_dir')
  config.training.update(num_steps=steps, log_every=window, eval_every=10 ** 9,
                         checkpoint_every=10 ** 9)
  with tempfile.TemporaryDirectory() as workdir:
    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      records = [json.loads(line) for line in f if '"train"' in line]
  loop_rate = float(np.mean([r['steps_per_second'] for r in records[1:]]))  # not compile

  training = config.training
  labels, _ = task.open_dataset(config, config.dataset.train_split)
  model = build_model(config.model)
  optimizer, _ = make_optimizer(training, steps, 0)
  params = init_params(config.model, jax.random.PRNGKey(0))
  state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  batch = jax.device_put(next(pipeline.train_batches(config.dataset, training.batch_size,
                                                     config.seed)))
  step = jax.jit(lambda s, b: train_step(s, b, model=model, optimizer=optimizer,
                                         training=training,
                                         num_classes=labels.num_classes, seed=0))
  seconds = _timed(lambda: jax.block_until_ready(step(state, batch)), 10)
  return {'loop_steps_per_s': loop_rate, 'step_steps_per_s': 1.0 / seconds,
          'batch': training.batch_size, 'clip': list(config.model.input_size)}


def loop_line(loop) -> str:
  return (f"Train loop on the embedded dataset (configs/synthetic_motion.py, batch "
          f"{loop['batch']}, {'x'.join(map(str, loop['clip']))} clips): "
          f"{loop['loop_steps_per_s']:.1f} steps/s; the bare train step "
          f"{loop['step_steps_per_s']:.1f} steps/s (the loop reaches "
          f"{100 * loop['loop_steps_per_s'] / loop['step_steps_per_s']:.0f} %).")


def run_loop(steps: int, data_dir, timeout: int):
  """`measure_loop` in a fresh process; None if it failed (the reason printed)."""
  spec = json.dumps({'steps': steps, 'data_dir': data_dir})
  try:
    result = subprocess.run([sys.executable, __file__, '--measure-loop', spec],
                            capture_output=True, text=True, timeout=timeout,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
    return json.loads(result.stdout.strip().splitlines()[-1])
  except (subprocess.TimeoutExpired, ValueError, IndexError) as e:
    print(f'  failed: the train loop: {e}', flush=True)
    return None


def markdown(report) -> str:
  lines = []
  if report.get('loop'):
    lines += [loop_line(report['loop']), '']
  if report['sweep']:
    lines += ['Forward seconds per frame against frames:', '',
              '| model | ' + ' | '.join(f'{f} frames' for f in report['sweep_frames']) + ' |',
              '|---|' + '---|' * len(report['sweep_frames'])]
    for variant, points in report['sweep'].items():
      lines.append(f'| {variant} | ' + ' | '.join(
          f"{p['seconds'] / p['frames']:.4f}" if 'error' not in p else 'failed'
          for p in points) + ' |')
  return '\n'.join(lines) + '\n'


def plot(report, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 4))
  for variant, points in report['sweep'].items():
    done = [p for p in points if 'error' not in p]
    time_ax.plot([p['frames'] for p in done], [p['seconds'] for p in done], 'o-',
                 label=variant)
    memory_ax.plot([p['frames'] for p in done], [p['peak_bytes'] / 2 ** 30 for p in done],
                   'o-', label=variant)
  time_ax.set(xlabel='frames', ylabel='forward seconds', xscale='log', yscale='log')
  memory_ax.set(xlabel='frames', ylabel='peak GiB', xscale='log')
  time_ax.legend(fontsize=7)
  fig.suptitle(f"{report['model']} {report['resolution']}px, batch {report['batch']}: "
               f"{report['machine']}", fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def machine(out: str) -> str:
  """The device the table measured (OUT/benchmark.json), else this host's name."""
  try:
    with open(os.path.join(out, 'benchmark.json')) as f:
      return json.load(f)['device']['kind']
  except (OSError, ValueError, KeyError):
    return os.uname().nodename


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', default='runs/benchmark', help='a new or empty directory')
  parser.add_argument('--sweep', default='', help='frame counts for the forward sweep, '
                      'e.g. 8,16,32,64 (every variant in --variants)')
  parser.add_argument('--loop-steps', type=int, default=60,
                      help='train-loop steps on the embedded dataset (0: skip)')
  parser.add_argument('--data-dir', help='TFDS directory for the embedded dataset')
  parser.add_argument('--no-table', dest='table', action='store_false',
                      help='skip the vivit-benchmark table')
  parser.add_argument('--measure-loop', help=argparse.SUPPRESS)
  args, passed = parser.parse_known_args(argv)
  if args.measure_loop:
    print(json.dumps(measure_loop(json.loads(args.measure_loop))))
    return 0
  from vivit import benchmark
  settings = benchmark.parser().parse_args(passed + ['--out', args.out])
  status = 0
  if args.table:
    status = benchmark.main(passed + ['--out', os.path.join(args.out, 'benchmark')])
  report = dict(sweep={}, loop=None, model=settings.model, batch=settings.batch,
                resolution=settings.resolution, machine=machine(args.out),
                sweep_frames=[int(f) for f in args.sweep.split(',') if f])
  if args.loop_steps:
    report['loop'] = run_loop(args.loop_steps, args.data_dir, settings.timeout)
    if report['loop']:
      print(loop_line(report['loop']), flush=True)
  runner = benchmark.Runner(settings.in_process, settings.timeout)
  base = dict(model=settings.model, resolution=settings.resolution, batch=settings.batch,
              layers=settings.layers, attention=settings.attention,
              repeats=settings.repeats, dtype=settings.dtypes.split(',')[0],
              **{'pass': 'forward'})
  for variant in benchmark.parse_variants(settings.variants) if report['sweep_frames'] else ():
    report['sweep'][variant] = []
    for count in report['sweep_frames']:
      point = runner.ours('measure', dict(base, variant=variant, frames=count))
      point['frames'] = count
      print(f'{variant} forward at {count} frames: ' + (
          point['error'] if 'error' in point else
          f"{point['seconds']:.3f} s, peak {point['peak_bytes'] / 2 ** 30:.2f} GiB"),
            flush=True)
      report['sweep'][variant].append(point)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'experiment.json'), 'w') as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(args.out, 'experiment.md'), 'w') as f:
    f.write(markdown(report))
  if report['sweep']:
    plot(report, os.path.join(args.out, 'frames.png'))
  print(markdown(report))
  return status


if __name__ == '__main__':
  sys.exit(main())
