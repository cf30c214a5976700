"""Speed and memory of every variant, side by side with HF transformers, in one run.

  python experiments/benchmark.py                       # ViViT-B/16x2, 32x224x224
  python experiments/benchmark.py --preset tiny         # seconds-long check
  python experiments/benchmark.py --sweep 8,16,32,64 --variants all

Measures on the machine it runs on: for each variant the forward (inference) and
the train step (forward + backward + global-norm clipping + momentum SGD) at batch
`--batch`: compile time, seconds per call (median of `--repeats`), XLA's FLOP
count and the fraction it reaches of the XLA matmul rate measured in the same
process and dtype, and peak memory (host RSS from after setup and compilation on
CPU, device peak on GPU); HF's `VivitForVideoClassification` on the same weights
(`to_transformers`, written by this process so the HF process imports no JAX) and
input, with the same clipping and SGD; the training loop's steps/s on the embedded
dataset beside its bare train step (input stalls); forward time and memory against
the frame count (`--sweep`). Every measurement runs in its own process, so peak
memory is its own. Writes OUT/benchmark.json, OUT/benchmark.md and, with a sweep,
OUT/frames.png.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's vivit, whichever one pip installed
PRESETS = {  # model name, frames, resolution
    'base': ('B/16x2', 32, 224),
    'tiny': ('S/16x2', 8, 64),
}


def peak_memory_bytes() -> int:
  """Peak device memory on an accelerator, else the process's peak RSS since the
  last `reset_peak_memory` (Linux's VmHWM; elsewhere since the start)."""
  import jax
  device = jax.devices()[0] if 'jax' in sys.modules else None
  if device is not None and device.platform != 'cpu':
    stats = device.memory_stats() or {}
    if 'peak_bytes_in_use' in stats:
      return int(stats['peak_bytes_in_use'])
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_memory() -> None:
  """Starts the peak RSS afresh (Linux), so that setup (weight conversion, loading,
  compilation) does not count: only the resident state and the pass itself."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
  except OSError:
    pass


def _timed(fn, repeats: int) -> float:
  fn()  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _pass(spec, lower: bool = True):
  """The jitted pass of `spec` and its arguments, or (lower=True) its lowering."""
  import jax
  import jax.numpy as jnp
  import optax
  import ml_collections
  from vivit.models import build_model, get_model_config, init_params, variants
  from vivit.step import TrainState, train_step
  config = get_model_config(spec['model'] + variants.get(spec['variant']).suffix,
                            num_classes=400,
                            input_size=(spec['frames'], spec['resolution'],
                                        spec['resolution']),
                            dtype=spec['dtype'], attention=spec['attention'])
  model = build_model(config)
  params = jax.eval_shape(lambda: init_params(config, jax.random.PRNGKey(0)))
  if not lower:
    params = jax.jit(lambda: init_params(config, jax.random.PRNGKey(0)))()
  video = jnp.asarray(np.random.RandomState(0).uniform(
      -1, 1, (spec['batch'],) + tuple(config.input_size) + (3,)), jnp.float32)
  if spec['pass'] == 'forward':
    fn, args = jax.jit(lambda p, v: model.apply({'params': p}, v)), (params, video)
  else:
    # Clipped as HF's side clips (torch.nn.utils.clip_grad_norm_), then momentum SGD.
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.01, momentum=0.9))
    training = ml_collections.ConfigDict(dict(label_smoothing=0.0, mixup=0.0))
    opt_state = (jax.eval_shape(optimizer.init, params) if lower else
                 optimizer.init(params))
    state = TrainState(jnp.zeros((), jnp.int32), params, opt_state)
    batch = {'video': video, 'label': jnp.zeros((spec['batch'],), jnp.int32)}
    fn = jax.jit(lambda s, b: train_step(s, b, model=model, optimizer=optimizer,
                                         training=training, num_classes=400, seed=0))
    args = (state, batch)
  return fn.lower(*args) if lower else (fn, args)


def measure_ours(spec):
  """{compile_s, seconds, flops, peak_bytes} of one pass of our model."""
  import jax
  fn, args = _pass(spec, lower=False)
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  reset_peak_memory()
  seconds = _timed(lambda: jax.block_until_ready(compiled(*args)), spec['repeats'])
  peak = peak_memory_bytes()
  return {'compile_s': compile_s, 'seconds': seconds, 'flops': model_flops(spec),
          'peak_bytes': peak, 'matmul_flops_per_s': matmul_rate(dtype=spec['dtype'])}


def model_flops(spec) -> float:
  """XLA's FLOP count of the pass with XLA's attention: the blocked one is a loop,
  whose body cost analysis counts once."""
  lowered = _pass(dict(spec, attention='xla'))
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float((cost or {}).get('flops', 0.0))


def write_hf_inputs(spec, directory: str) -> None:
  """Our random weights as an HF checkpoint (`to_transformers`) and the benchmark's
  input as HF `pixel_values`, for `measure_hf` to load without importing JAX."""
  import jax
  from vivit.convert import to_hf_pixel_values, to_transformers
  from vivit.models import get_model_config, init_params
  config = get_model_config(spec['model'], num_classes=400,
                            input_size=(spec['frames'], spec['resolution'],
                                        spec['resolution']))
  params = jax.jit(lambda: init_params(config, jax.random.PRNGKey(0)))()
  to_transformers(config, jax.tree_util.tree_map(np.asarray, params), directory)
  video = np.random.RandomState(0).uniform(
      -1, 1, (spec['batch'],) + tuple(config.input_size) + (3,)).astype(np.float32)
  np.save(os.path.join(directory, 'pixel_values.npy'), to_hf_pixel_values(video))


def measure_hf(spec):
  """{seconds, peak_bytes} of HF transformers' ViViT (model 1) on our weights (from
  `write_hf_inputs`'s directory)."""
  import torch
  from transformers import VivitForVideoClassification
  torch.set_num_threads(os.cpu_count())
  model = VivitForVideoClassification.from_pretrained(spec['hf_dir'])
  pixels = torch.tensor(np.load(os.path.join(spec['hf_dir'], 'pixel_values.npy')))
  labels = torch.zeros((spec['batch'],), dtype=torch.long)
  reset_peak_memory()
  if spec['pass'] == 'forward':
    model.eval()

    def run():
      with torch.no_grad():
        model(pixel_values=pixels)
  else:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run():
      optimizer.zero_grad()
      model(pixel_values=pixels, labels=labels).loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      optimizer.step()
  seconds = _timed(run, spec['repeats'])
  return {'seconds': seconds, 'peak_bytes': peak_memory_bytes()}


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


def matmul_rate(size: int = 2048, repeats: int = 5, dtype: str = 'float32') -> float:
  """FLOP/s of XLA's `dtype` matmul on the default device."""
  import jax
  import jax.numpy as jnp
  a = jnp.asarray(np.random.RandomState(0).normal(size=(size, size)), dtype)
  matmul = jax.jit(lambda x, y: x @ y)
  seconds = _timed(lambda: matmul(a, a).block_until_ready(), repeats)
  return 2 * size ** 3 / seconds


def run_measurement(spec, timeout: int):
  """`spec` measured in a fresh process; None if it failed or ran past `timeout`
  seconds (the reason printed)."""
  try:
    result = subprocess.run([sys.executable, __file__, '--measure', json.dumps(spec)],
                            capture_output=True, text=True, timeout=timeout,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'))
  except subprocess.TimeoutExpired:
    print(f'  failed: {spec}: still running after {timeout} s (--timeout)', flush=True)
    return None
  try:
    if result.returncode:
      raise ValueError(result.stderr.strip().splitlines()[-1:])
    return json.loads(result.stdout.strip().splitlines()[-1])
  except (ValueError, IndexError) as e:
    print(f'  failed: {spec}: {e}', flush=True)
    return None


def markdown(report) -> str:
  from vivit.models import variants
  lines = [f"Machine: {report['machine']}; XLA float32 matmul "
           f"{report['matmul_gflops']:.0f} GFLOP/s. {report['model']} at "
           f"{report['frames']}x{report['resolution']}x{report['resolution']}, batch "
           f"{report['batch']}, {report['dtype']}.", '',
           '| model | pass | s/call | vs HF | compile s | GFLOP | % of matmul rate | peak GiB |',
           '|---|---|---|---|---|---|---|---|']
  for row in report['rows']:
    hf = report['hf'].get(row['pass'])
    ratio = f"{hf['seconds'] / row['seconds']:.2f}x" if hf and row['variant'] == \
        variants.SPATIO_TEMPORAL else ''
    lines.append(f"| {row['variant']} | {row['pass']} | {row['seconds']:.3f} | {ratio} | "
                 f"{row['compile_s']:.1f} | {row['flops'] / 1e9:.0f} | "
                 f"{100 * row['utilisation']:.0f} | {row['peak_bytes'] / 2 ** 30:.2f} |")
  for name, hf in report['hf'].items():
    lines.append(f"| HF transformers (model 1) | {name} | {hf['seconds']:.3f} | 1.00x | | "
                 f"| | {hf['peak_bytes'] / 2 ** 30:.2f} |")
  if report.get('loop'):
    lines += ['', loop_line(report['loop'])]
  if report['sweep']:
    lines += ['', 'Forward seconds per frame against frames:', '',
              '| model | ' + ' | '.join(f'{f} frames' for f in report['sweep_frames']) + ' |',
              '|---|' + '---|' * len(report['sweep_frames'])]
    for variant, points in report['sweep'].items():
      lines.append(f'| {variant} | ' + ' | '.join(
          f"{p['seconds'] / p['frames']:.4f}" if p else 'failed' for p in points) + ' |')
  return '\n'.join(lines) + '\n'


def plot(report, path: str) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(10, 4))
  for variant, points in report['sweep'].items():
    done = [p for p in points if p]
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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--preset', choices=tuple(PRESETS), default='base')
  parser.add_argument('--model', help='SIZE/PATCHxT, e.g. B/16x2 (default: the preset)')
  parser.add_argument('--frames', type=int)
  parser.add_argument('--resolution', type=int)
  parser.add_argument('--batch', type=int, default=1)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--attention', default='auto', help='model.attention')
  parser.add_argument('--variants', help="comma-separated names of "
                      "vivit.models.variants, or 'all' (default: model 1's)")
  parser.add_argument('--passes', default='forward,train')
  parser.add_argument('--sweep', default='', help='frame counts for the forward sweep, '
                      'e.g. 8,16,32,64 (every variant in --variants)')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--loop-steps', type=int, default=60,
                      help='train-loop steps on the embedded dataset (0: skip)')
  parser.add_argument('--data-dir', help='TFDS directory for the embedded dataset')
  parser.add_argument('--no-hf', dest='hf', action='store_false')
  parser.add_argument('--timeout', type=int, default=1800, help='per measurement, s')
  parser.add_argument('--out', default='runs/benchmark')
  parser.add_argument('--measure', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.measure:
    spec = json.loads(args.measure)
    measure = {None: measure_ours, 'transformers': measure_hf, 'loop': measure_loop}
    result = measure[spec.get('peer')](spec)
    print(json.dumps(result))
    return 0

  model, frames, resolution = PRESETS[args.preset]
  model, frames = args.model or model, args.frames or frames
  resolution = args.resolution or resolution
  import jax
  from vivit.models import variants  # not before: the HF process imports no JAX
  chosen = (variants.NAMES if args.variants == 'all' else
            (args.variants or variants.SPATIO_TEMPORAL).split(','))
  device = jax.devices()[0]
  machine = (f'{device.device_kind} ({device.platform})' if device.platform != 'cpu' else
             f'{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores')
  rate = matmul_rate()
  print(f'{machine}: XLA float32 matmul {rate / 1e9:.0f} GFLOP/s', flush=True)
  base = dict(model=model, frames=frames, resolution=resolution, batch=args.batch,
              dtype=args.dtype, attention=args.attention, repeats=args.repeats)
  report = dict(machine=machine, matmul_gflops=rate / 1e9, model=model, frames=frames,
                resolution=resolution, batch=args.batch, dtype=args.dtype,
                attention=args.attention, rows=[], hf={}, sweep={}, loop=None,
                sweep_frames=[int(f) for f in args.sweep.split(',') if f])
  for variant in chosen:
    for name in args.passes.split(','):
      row = run_measurement(dict(base, variant=variant, **{'pass': name}), args.timeout)
      if row:
        row.update(variant=variant,
                   utilisation=row['flops'] / row['seconds'] / row['matmul_flops_per_s'],
                   **{'pass': name})
        report['rows'].append(row)
        print(f"{variant} {name}: {row['seconds']:.3f} s, compile {row['compile_s']:.1f} s, "
              f"{row['flops'] / 1e9:.0f} GFLOP ({100 * row['utilisation']:.0f} % of the "
              f"matmul rate), peak {row['peak_bytes'] / 2 ** 30:.2f} GiB", flush=True)
  if args.hf and variants.SPATIO_TEMPORAL in chosen and args.dtype == 'float32':
    with tempfile.TemporaryDirectory() as hf_dir:
      write_hf_inputs(base, hf_dir)
      for name in args.passes.split(','):
        hf = run_measurement(dict(base, variant=variants.SPATIO_TEMPORAL,
                                  peer='transformers', hf_dir=hf_dir, **{'pass': name}),
                             args.timeout)
        if hf:
          report['hf'][name] = hf
          print(f"HF transformers {name}: {hf['seconds']:.3f} s, peak "
                f"{hf['peak_bytes'] / 2 ** 30:.2f} GiB", flush=True)
  if args.loop_steps:
    report['loop'] = run_measurement(dict(peer='loop', steps=args.loop_steps,
                                          data_dir=args.data_dir), args.timeout)
    if report['loop']:
      print(loop_line(report['loop']), flush=True)
  for variant in chosen if report['sweep_frames'] else ():
    report['sweep'][variant] = []
    for count in report['sweep_frames']:
      point = run_measurement(dict(base, variant=variant, frames=count,
                                   **{'pass': 'forward'}), args.timeout)
      if point:
        point['frames'] = count
        print(f'{variant} forward at {count} frames: {point["seconds"]:.3f} s, peak '
              f'{point["peak_bytes"] / 2 ** 30:.2f} GiB', flush=True)
      report['sweep'][variant].append(point)
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, 'benchmark.json'), 'w') as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(args.out, 'benchmark.md'), 'w') as f:
    f.write(markdown(report))
  if report['sweep']:
    plot(report, os.path.join(args.out, 'frames.png'))
  print(markdown(report))
  return 0


if __name__ == '__main__':
  sys.exit(main())
