"""Speed of each variant on this machine's accelerator, against its peak and HF's ViViT.

  vivit-benchmark --out results/gpu
  vivit-benchmark --out results/fe --variants 2 --dtypes bfloat16 --batch 32
  vivit-benchmark --out quick --model S/16x2 --frames 8 --resolution 64 --layers 2

For each variant (the paper's models 1-4, `--variants`), compute dtype (`--dtypes`)
and pass (`--passes`): the forward (inference) and the train step (vivit.step's, as
training runs it: forward, backward, gradient clipping per 8 clips, momentum SGD; the
state donated) on `--batch` random clips of `--frames` x `--resolution`^2 at model
size `--model` (default ViViT-B/16x2 at 32x224x224, batch 8). Each reports clips/s
(the median of `--repeats` calls after a warm-up), compile time, model FLOPs per clip
(XLA's cost analysis of the pass lowered with attention='xla', so that every
attention's matmuls count whichever implementation ran), model FLOPs utilisation
(achieved FLOP/s over the chip's dense peak for the dtype, from `vivit.peaks` by
device kind, or `--peak_tflops`), peak memory (the device's peak_bytes_in_use; on CPU
the process's peak RSS from the first call on) and the attention implementation each
attention call ran. With torch finding a CUDA GPU (or `--hf`), HF transformers'
ViViT (model 1, SDPA attention) runs on the same weights and clips
(`vivit.benchmark_hf`). Each measurement runs in a process of its own, so that its
peak memory is its own (`--in_process`: all in this one, a quicker check).

Writes OUT.json and OUT.md (OUT a directory: OUT/benchmark.json and .md), rewritten
whole after each measurement; files that exist are replaced only with `--overwrite`.
Exit status 1 when a measurement failed (its error is in the files).
"""
import collections
import contextlib
import datetime
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from typing import List, Optional, Sequence, Tuple

import numpy as np

from vivit import cli, outputs, peaks, verbose
from vivit.errors import ConfigError
from vivit.workdir import writing

NUM_CLASSES = 400  # Kinetics-400's head, as the checkpoints this project loads
PASSES = ('forward', 'train')
DTYPES = ('float32', 'bfloat16')  # vivit.models.vivit.DTYPES
MAX_BATCH = 4096
MAX_REPEATS = 10000


# --- one measurement: runs in its own process (`main(['--measure', SPEC])`) ---------


def model_config(spec):
  """The model config of a measurement `spec`."""
  from vivit.models import get_model_config, variants
  config = get_model_config(
      spec['model'] + variants.get(spec['variant']).suffix, num_classes=NUM_CLASSES,
      input_size=(spec['frames'], spec['resolution'], spec['resolution']),
      dtype=spec['dtype'], attention=spec['attention'])
  if spec.get('layers'):
    config.num_layers = spec['layers']
    config.temporal.num_layers = min(spec['layers'], config.temporal.num_layers)
  return config


def clips(spec) -> np.ndarray:
  """The benchmark's input: `spec['batch']` random uint8 clips, as the input pipeline
  feeds them (converted on the device)."""
  shape = (spec['batch'], spec['frames'], spec['resolution'], spec['resolution'], 3)
  return np.random.RandomState(0).randint(0, 256, shape, dtype=np.uint8)


def training_settings(batch: int):
  """The base config's training section (momentum SGD, global-norm clipping per 8
  clips), clipping the whole batch where 8 does not divide it."""
  from vivit.recipes import base_config
  training = base_config().training
  if batch % training.grad_clip_group:
    training.grad_clip_group = 0
  return training


def jitted_pass(spec, config, abstract: bool = False):
  """(the jitted pass, its arguments): the arguments as shapes only if `abstract`."""
  import jax
  import jax.numpy as jnp
  from vivit.models import build_model, init_params
  from vivit.optim import make_optimizer
  from vivit.step import initial_state, train_step
  model = build_model(config)
  init = functools.partial(init_params, config)
  key = jax.random.PRNGKey(0)
  params = jax.eval_shape(init, key) if abstract else jax.jit(init)(key)
  video = clips(spec)
  video = jax.ShapeDtypeStruct(video.shape, video.dtype) if abstract else jnp.asarray(video)
  if spec['pass'] == 'forward':
    return jax.jit(lambda p, v: model.apply({'params': p}, v)), (params, video)
  training = training_settings(spec['batch'])
  optimizer, _ = make_optimizer(training, 10 ** 6, 0)
  start = functools.partial(initial_state, optimizer=optimizer, training=training)
  state = jax.eval_shape(start, params) if abstract else jax.jit(start)(params)
  labels = jnp.zeros((spec['batch'],), jnp.int32)
  step = jax.jit(functools.partial(train_step, model=model, optimizer=optimizer,
                                   training=training, num_classes=NUM_CLASSES, seed=0),
                 donate_argnums=0)
  return step, (state, {'video': video, 'label': labels})


@contextlib.contextmanager
def recorded_attention(calls: List[dict], where=None):
  """Within the block, each attention the model traces appends to `calls`: its part
  ('all'; model 4's 'time' and 'space' halves), query shape `[batch, tokens, heads,
  head_dim]`, dtype and the implementation that runs it (for 'auto',
  `attention.describe_auto_implementation` of those arrays on `where`, an
  `attention.Accelerator`: by default this process's)."""
  import flax.linen as nn
  import jax
  from vivit.models import attention
  from vivit.models.layers import SelfAttention

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, SelfAttention) and context.method_name == '__call__':
      batch, length, hidden = args[0].shape
      heads, depth = module.num_heads, hidden // module.num_heads
      if module.factorised_grid is None:
        parts = [('all', (batch, length, heads, depth))]
      else:  # as attention.factorised_attend splits the heads
        time_, space = module.factorised_grid
        parts = [('time', (batch * space, time_, heads // 2, depth)),
                 ('space', (batch * time_, space, heads // 2, depth))]
      for part, shape in parts:
        query = jax.ShapeDtypeStruct(shape, module.dtype)
        implementation = module.implementation
        if implementation == 'auto':
          implementation = attention.describe_auto_implementation(
              query, query, query, where or attention.accelerator())
        calls.append({'part': part, 'shape': list(shape), 'dtype': query.dtype.name,
                      'implementation': implementation})
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(record):
    yield


def attention_summary(calls: Sequence[dict]) -> List[dict]:
  """`recorded_attention`'s calls counted: [{part, shape, dtype, implementation,
  calls}] in the order first seen."""
  counts = collections.Counter(json.dumps(call, sort_keys=True) for call in calls)
  return [dict(json.loads(key), calls=count) for key, count in counts.items()]


def xla_flops(spec) -> float:
  """XLA's FLOP count of the pass of `spec` lowered with attention='xla' (the
  blocked scan's body would count once, the fused and cuDNN kernels not at all)."""
  fn, args = jitted_pass(spec, model_config(dict(spec, attention='xla')), abstract=True)
  cost = fn.lower(*args).cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', 0.0))


def peak_memory(device) -> Tuple[int, str]:
  """(peak bytes, what was measured): the device's peak_bytes_in_use, else (CPU) the
  process's peak RSS since `peaks.reset_host_peak`."""
  stats = device.memory_stats() if device.platform != 'cpu' else None
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak_bytes_in_use'
  return peaks.host_peak_bytes(), 'process peak RSS'


def measure(spec) -> dict:
  """One pass of one variant and dtype on this process's first device."""
  import jax
  from vivit.models import attention
  config = model_config(spec)
  fn, args = jitted_pass(spec, config)
  calls = []
  start = time.perf_counter()
  with recorded_attention(calls):
    lowered = fn.lower(*args)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - start
  flops = xla_flops(spec)
  arguments = list(args)

  def call():
    out = compiled(*arguments)
    if spec['pass'] == 'train':
      arguments[0] = out[0]  # the state was donated
    jax.block_until_ready(out)
  peaks.reset_host_peak()
  call()  # warm-up
  times = []
  for _ in range(spec['repeats']):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  device = jax.devices()[0]
  peak, peak_measure = peak_memory(device)
  seconds = statistics.median(times)
  return {'seconds': seconds, 'clips_per_s': spec['batch'] / seconds,
          'compile_s': compile_s, 'flops_per_clip': flops / spec['batch'],
          'peak_bytes': peak, 'peak_memory': peak_measure,
          'attention': attention_summary(calls), 'device_kind': device.device_kind,
          'platform': device.platform, 'device_count': jax.device_count(),
          'accelerator': attention.accelerator()._asdict(),
          'jax': jax.__version__}


def write_hf_inputs(spec, directory: str) -> dict:
  """Model 1's weights as `measure` makes them, as an HF checkpoint
  (`to_transformers`), and `clips(spec)` as HF `pixel_values`, in `directory`."""
  import jax
  from vivit.convert import to_hf_pixel_values, to_transformers
  from vivit.models import init_params
  config = model_config(spec)
  params = jax.jit(functools.partial(init_params, config))(jax.random.PRNGKey(0))
  to_transformers(config, jax.tree_util.tree_map(np.asarray, params), directory)
  pixels = to_hf_pixel_values(clips(spec).astype(np.float32) / 127.5 - 1.0)
  np.save(os.path.join(directory, 'pixel_values.npy'), pixels)
  return {}


CHILD_TASKS = {'measure': measure, 'hf_inputs': write_hf_inputs}


def child(spec_text: str) -> int:
  """A measurement process: `spec`'s task, its result as the last line of stdout
  ({'error': ...} if it failed, the traceback on stderr)."""
  spec = json.loads(spec_text)
  try:
    task = CHILD_TASKS[spec.pop('task')]
    result = task(spec, **({'directory': spec.pop('directory')} if 'directory' in spec
                           else {}))
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    result = {'error': f'{type(e).__name__}: {cli.one_line(e)}'[:500]}
  print(json.dumps(result), flush=True)
  return 1 if 'error' in result else 0


# --- the command -------------------------------------------------------------------


class Runner:
  """Runs a task in a process of its own (`python -m vivit.benchmark --measure` or
  `python -m vivit.benchmark_hf`) or, `in_process`, in this one; a failure is a
  result {'error': its last line}."""

  def __init__(self, in_process: bool, timeout: int):
    self.in_process, self.timeout = in_process, timeout

  def ours(self, task: str, spec: dict, **extra) -> dict:
    if self.in_process:
      return self._here(lambda: CHILD_TASKS[task](spec, **extra))
    return self._process(['vivit.benchmark', '--measure',
                          json.dumps(dict(spec, task=task, **extra))])

  def hf(self, spec: dict) -> dict:
    return self._process(['vivit.benchmark_hf', json.dumps(spec)])

  @staticmethod
  def _here(task) -> dict:
    try:
      return task()
    except Exception as e:  # pylint: disable=broad-except
      if verbose():
        raise
      return {'error': f'{type(e).__name__}: {cli.one_line(e)}'[:500]}

  def _process(self, module_args: List[str]) -> dict:
    env = dict(os.environ)
    env.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
    try:
      done = subprocess.run([sys.executable, '-m'] + module_args, capture_output=True,
                            text=True, timeout=self.timeout, env=env)
    except subprocess.TimeoutExpired:
      return {'error': f'still running after {self.timeout} s (--timeout)'}
    if verbose():
      sys.stderr.write(done.stderr)
    lines = done.stdout.strip().splitlines()
    try:
      return json.loads(lines[-1])
    except (IndexError, ValueError):
      last = [line for line in done.stderr.strip().splitlines() if line.strip()]
      return {'error': (last[-1] if last else f'exit status {done.returncode}')[:500]}


def parse_variants(text: str) -> List[str]:
  """`--variants`: paper model numbers (1-4) or variant names, comma-separated."""
  from vivit.models import variants
  chosen = []
  for item in text.split(','):
    item = item.strip()
    found = [v.name for v in variants.VARIANTS if item in (str(v.paper_model), v.name)]
    if not found:
      raise ConfigError(f'--variants {text}: unknown variant {item!r}; give model numbers '
                        f'1-4 or names ({", ".join(variants.NAMES)})')
    chosen += [name for name in found if name not in chosen]
  return chosen


def parse_choices(option: str, text: str, allowed: Sequence[str]) -> List[str]:
  """A comma-separated `option` whose items are among `allowed`, in order, once each."""
  items = list(dict.fromkeys(item.strip() for item in text.split(',')))
  wrong = [item for item in items if item not in allowed]
  if wrong or not items:
    raise ConfigError(f'{option} {text}: expected some of {",".join(allowed)}')
  return items


def check_model(args) -> None:
  """A one-line error for a model size or clip shape that no variant can take."""
  from vivit.models import get_model_config, variants
  try:
    config = get_model_config(args.model)
  except ConfigError as e:
    raise ConfigError(f'--model {args.model}: {e}') from None
  if config.variant != variants.SPATIO_TEMPORAL:
    raise ConfigError(f'--model {args.model}: give the size without a variant suffix '
                      f'(e.g. B/16x2); --variants picks the variants')
  time_, patch = config.tubelet[0], config.tubelet[1]
  if args.frames % time_:
    raise ConfigError(f'--frames {args.frames}: not a multiple of {args.model}\'s '
                      f'tubelet length {time_}')
  if args.resolution % patch:
    raise ConfigError(f'--resolution {args.resolution}: not a multiple of '
                      f'{args.model}\'s patch size {patch}')


def output_paths(out: str) -> Tuple[str, str]:
  """(JSON path, Markdown path) of `--out`: OUT.json and OUT.md, or in a directory
  OUT/benchmark.json and .md; a .json or .md ending of OUT is dropped."""
  if os.path.isdir(out) or out.endswith(os.sep):
    out = os.path.join(out, 'benchmark')
  elif out.endswith(('.json', '.md')):
    out = os.path.splitext(out)[0]
  return out + '.json', out + '.md'


def device_peak_tflops(report, dtype: str) -> Optional[float]:
  """The peak that MFU is measured against: `--peak_tflops`, else the table's."""
  device = report['device']
  if device.get('peak_tflops_given'):
    return device['peak_tflops_given']
  peak = device.get('peak')
  return peak[dtype] if peak else None


def set_device(report, row: dict) -> None:
  """Fills in `report['device']` from the first measurement that ran."""
  device = report['device']
  if device.get('kind') or 'device_kind' not in row:
    return
  peak = peaks.device_peak(row['device_kind'])
  device.update(kind=row['device_kind'], platform=row['platform'],
                count=row['device_count'], accelerator=row['accelerator'],
                peak=peak._asdict() if peak else None)
  report['versions']['jax'] = row['jax']


def add_utilisation(report, row: dict, flops_per_clip: float) -> None:
  row['tflops'] = flops_per_clip * row['clips_per_s'] / 1e12
  row['mfu'] = peaks.utilisation(flops_per_clip, row['clips_per_s'],
                                 device_peak_tflops(report, row['dtype']))


def fmt(value, spec: str, missing: str = '') -> str:
  return missing if value is None else format(value, spec)


def attention_cell(summary: Sequence[dict]) -> str:
  """E.g. `cudnn x12 (197 tokens), blocked x4 (17 tokens)`."""
  return ', '.join(f"{a['implementation']} x{a['calls']} ({a['shape'][1]} tokens"
                   f"{'' if a['part'] == 'all' else ', ' + a['part']})" for a in summary)


def result_line(row: dict) -> str:
  if 'error' in row:
    return f"  failed: {row['error']}"
  parts = [f"{row['clips_per_s']:.2f} clips/s"]
  if 'compile_s' in row:
    parts.append(f"compile {row['compile_s']:.1f} s")
  if row.get('flops_per_clip'):
    parts.append(f"{row['flops_per_clip'] / 1e9:.4g} GFLOP/clip, {row['tflops']:.2f} TFLOP/s")
  if row.get('mfu') is not None:
    parts.append(f"MFU {100 * row['mfu']:.1f} %")
  parts.append(f"peak {row['peak_bytes'] / 2 ** 30:.2f} GiB")
  if row.get('attention'):  # ours: the calls counted; HF's: its implementation's name
    attention = row['attention']
    parts.append('attention ' + (attention_cell(attention) if isinstance(attention, list)
                                 else attention))
  return '  ' + ', '.join(parts)


def markdown(report) -> str:
  """The report as the Markdown the README's GPU table comes from."""
  from vivit.models import variants
  settings, device = report['settings'], report['device']
  peak = device.get('peak')
  peak_text = (f"peak {device['peak_tflops_given']} TFLOP/s (--peak_tflops)"
               if device.get('peak_tflops_given') else
               f"peak (dense) {peak['bfloat16']} TFLOP/s bfloat16, {peak['float32']} "
               f"float32 ({peak['name']}, vivit/peaks.py)" if peak else
               'no known peak (MFU needs --peak_tflops)')
  lines = [
      f"{device.get('kind') or 'no device measured'} ({device.get('platform')}), "
      f"{peak_text}. {settings['model']} at {settings['frames']}x{settings['resolution']}x"
      f"{settings['resolution']}"
      + (f" ({settings['layers']} layers)" if settings['layers'] else '')
      + f", batch {settings['batch']}, attention={settings['attention']}; median of "
      f"{settings['repeats']} calls. {report['date']}, jax {report['versions'].get('jax')}"
      + ('' if report['complete'] else ' (incomplete: still running or stopped)') + '.',
      '', f"`{report['command']}`", '',
      '| model | dtype | pass | clips/s | vs HF | compile s | GFLOP/clip | TFLOP/s | MFU % '
      '| peak GiB | attention |',
      '|---|---|---|---|---|---|---|---|---|---|---|']
  hf = {(r['dtype'], r['pass']): r for r in report['hf'] if 'error' not in r}
  for row in report['rows']:
    name = f"{variants.get(row['variant']).paper_model} ({row['variant']})"
    if 'error' in row:
      lines.append(f"| {name} | {row['dtype']} | {row['pass']} | failed: "
                   f"{row['error'][:200]} | | | | | | | |")
      continue
    peer = hf.get((row['dtype'], row['pass']))
    ratio = (f"{row['clips_per_s'] / peer['clips_per_s']:.2f}x"
             if peer and row['variant'] == variants.SPATIO_TEMPORAL else '')
    lines.append(
        f"| {name} | {row['dtype']} | {row['pass']} | {row['clips_per_s']:.2f} | {ratio} | "
        f"{row['compile_s']:.1f} | {row['flops_per_clip'] / 1e9:.4g} | {row['tflops']:.2f} "
        f"| {fmt(row['mfu'] and 100 * row['mfu'], '.1f')} | "
        f"{row['peak_bytes'] / 2 ** 30:.2f} | {attention_cell(row['attention'])} |")
  for row in report['hf']:
    name = 'HF transformers (model 1)'
    if 'error' in row:
      lines.append(f"| {name} | {row['dtype']} | {row['pass']} | failed: "
                   f"{row['error'][:200]} | | | | | | | |")
      continue
    lines.append(
        f"| {name} | {row['dtype']} | {row['pass']} | {row['clips_per_s']:.2f} | 1.00x | | "
        f"| {fmt(row.get('tflops'), '.2f')} | "
        f"{fmt(row.get('mfu') and 100 * row['mfu'], '.1f')} | "
        f"{row['peak_bytes'] / 2 ** 30:.2f} | {row['attention']} ({row['device']}) |")
  if report.get('hf_skipped'):
    lines += ['', f"HF transformers: not measured ({report['hf_skipped']})."]
  lines += ['', f"FLOPs: {report['flops']}. Peak memory: {report['peak_memory']}."]
  return '\n'.join(lines) + '\n'


def write_report(paths: Tuple[str, str], report) -> None:
  json_path, md_path = paths
  text = {json_path: json.dumps(report, indent=2) + '\n', md_path: markdown(report)}

  def writer(path):
    def write(partial):
      with open(partial, 'w') as f:
        f.write(text[path])
    return write
  outputs.write_files({path: writer(path) for path in paths})


def hf_device(hf: Optional[bool], platform_: Optional[str]) -> Tuple[Optional[str], str]:
  """(torch's device for HF's side, or None; why not): CUDA where ours ran on a GPU
  and torch finds one; with `--hf`, else the CPU; with `--no_hf`, None."""
  if hf is False:
    return None, '--no_hf'
  from vivit import benchmark_hf
  if hf is None:
    if platform_ != 'gpu':
      return None, f'JAX ran on {platform_ or "no device"}; --hf measures it there too'
    if not benchmark_hf.cuda_available():
      return None, 'torch with CUDA is not installed; --hf measures it on the CPU'
    return 'cuda', ''
  import torch  # --hf: a missing torch is the 'hf' extra's one-line error
  import transformers  # pylint: disable=unused-import
  del transformers
  return ('cuda' if platform_ == 'gpu' and torch.cuda.is_available() else 'cpu'), ''


def parser():
  p = cli.ArgumentParser(prog='vivit-benchmark', description=__doc__)
  p.add_argument('--out', required=True, metavar='OUT',
                 help='writes OUT.json and OUT.md (OUT a directory: OUT/benchmark.*)')
  p.add_argument('--overwrite', action='store_true', help='replace files that exist')
  p.add_argument('--model', default='B/16x2', help='model size SIZE/PATCHxT (default B/16x2)')
  p.add_argument('--variants', default='1,2,3,4',
                 help='paper model numbers or variant names, comma-separated (default all)')
  p.add_argument('--dtypes', default=','.join(DTYPES),
                 help='compute dtypes, comma-separated (default float32,bfloat16)')
  p.add_argument('--passes', default=','.join(PASSES),
                 help='forward and/or train (default both)')
  p.add_argument('--frames', type=cli.whole(1, 4096), default=32)
  p.add_argument('--resolution', type=cli.whole(1, 8192), default=224)
  p.add_argument('--batch', type=cli.whole(1, MAX_BATCH), default=8)
  p.add_argument('--layers', type=cli.whole(1, 1000),
                 help='encoder depth instead of the size\'s (a quicker check)')
  p.add_argument('--attention', default='auto', help='model.attention (default auto)')
  p.add_argument('--repeats', type=cli.whole(1, MAX_REPEATS), default=10,
                 help='timed calls after the warm-up (default 10)')
  p.add_argument('--peak_tflops', type=cli.finite(0, 1e7, above=True),
                 help='the device\'s peak TFLOP/s for MFU (default: vivit/peaks.py\'s '
                 'figure for the device kind and dtype)')
  hf = p.add_mutually_exclusive_group()
  hf.add_argument('--hf', action='store_true', default=None,
                  help='measure HF transformers\' ViViT also where torch finds no GPU')
  hf.add_argument('--no_hf', dest='hf', action='store_false', help='do not measure HF\'s')
  p.add_argument('--in_process', action='store_true',
                 help='every measurement in this process (peak memory then accumulates '
                 'on a GPU)')
  p.add_argument('--timeout', type=cli.whole(1, 10 ** 6), default=3600,
                 help='seconds per measurement (default 3600)')
  return p


def _main(argv: Optional[List[str]]) -> int:
  from vivit.models.attention import ATTENTION_IMPLEMENTATIONS
  args = parser().parse_args(argv)
  chosen = parse_variants(args.variants)
  dtypes = parse_choices('--dtypes', args.dtypes, DTYPES)
  passes = parse_choices('--passes', args.passes, PASSES)
  if args.attention not in ATTENTION_IMPLEMENTATIONS or args.attention == 'observed':
    raise ConfigError(f'--attention {args.attention}: expected one of '
                      f'{", ".join(a for a in ATTENTION_IMPLEMENTATIONS if a != "observed")}')
  check_model(args)
  if args.in_process:  # leave GPU memory to HF's process: JAX allocates what it uses
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  paths = output_paths(args.out)
  directory = os.path.dirname(os.path.abspath(paths[0]))
  if not os.path.isdir(directory) and not os.path.lexists(directory):
    with writing(directory):
      os.makedirs(directory)
  outputs.check_files('--out', paths, {}, args.overwrite)

  settings = dict(model=args.model, frames=args.frames, resolution=args.resolution,
                  batch=args.batch, layers=args.layers, attention=args.attention,
                  repeats=args.repeats)
  training = training_settings(args.batch)
  report = {
      'command': ' '.join(['vivit-benchmark'] + list(sys.argv[1:] if argv is None else argv)),
      'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
      'complete': False,
      'settings': dict(settings, training=dict(
          optimizer=training.optimizer, momentum=training.momentum,
          grad_clip=training.grad_clip, grad_clip_group=training.grad_clip_group or None,
          augmentation='none (the clips as they arrive)')),
      'device': {'peak_tflops_given': args.peak_tflops},
      'versions': {'python': platform.python_version()},
      'flops': 'XLA cost analysis of each pass lowered with attention=xla, per clip',
      'peak_memory': ('the device\'s peak_bytes_in_use (on CPU the process\'s peak RSS '
                      'from the first call on), '
                      + ('all measurements in one process (--in_process)'
                         if args.in_process else 'each measurement in its own process')),
      'rows': [], 'hf': [], 'hf_skipped': None}
  runner = Runner(args.in_process, args.timeout)
  jobs = [(variant, dtype, name) for variant in chosen for dtype in dtypes
          for name in passes]
  print(f"vivit-benchmark: {len(jobs)} measurements of {args.model} at {args.frames}x"
        f"{args.resolution}x{args.resolution}, batch {args.batch}; writing "
        f"{paths[0]} and {paths[1]}", flush=True)
  from vivit.models import variants
  for i, (variant, dtype, name) in enumerate(jobs):
    print(f"[{i + 1}/{len(jobs)}] model {variants.get(variant).paper_model} ({variant}) "
          f"{dtype} {name}", flush=True)
    spec = dict(settings, variant=variant, dtype=dtype, **{'pass': name})
    row = runner.ours('measure', spec)
    set_device(report, row)
    row = dict(variant=variant, dtype=dtype, **{'pass': name}, **row)
    if 'error' not in row:
      add_utilisation(report, row, row['flops_per_clip'])
    report['rows'].append(row)
    print(result_line(row), flush=True)
    write_report(paths, report)

  if variants.SPATIO_TEMPORAL in chosen:
    measure_hf(args, report, runner, settings, dtypes, passes, paths)
  report['complete'] = True
  write_report(paths, report)
  print(markdown(report), flush=True)
  failed = sum('error' in row for row in report['rows'] + report['hf'])
  if failed:
    print(f'{failed} measurements failed; their errors are in {paths[0]}', flush=True)
  return 1 if failed else 0


def measure_hf(args, report, runner, settings, dtypes, passes, paths) -> None:
  """HF transformers' model 1 on the same weights and clips, each dtype and pass."""
  import tempfile
  from vivit.models import variants
  device, why_not = hf_device(args.hf, report['device'].get('platform'))
  if device is None:
    report['hf_skipped'] = why_not
    print(f'HF transformers: not measured ({why_not})', flush=True)
    return
  ours = {(r['dtype'], r['pass']): r for r in report['rows']
          if r['variant'] == variants.SPATIO_TEMPORAL and 'error' not in r}
  with tempfile.TemporaryDirectory() as hf_dir:
    base = dict(settings, variant=variants.SPATIO_TEMPORAL, dtype=DTYPES[0])
    written = runner.ours('hf_inputs', dict(base, **{'pass': 'forward'}), directory=hf_dir)
    for dtype in dtypes:
      for name in passes:
        print(f'HF transformers (model 1, SDPA) {dtype} {name} on {device}', flush=True)
        row = written if 'error' in written else runner.hf(dict(
            hf_dir=hf_dir, device=device, dtype=dtype, repeats=args.repeats,
            **{'pass': name}))
        row = dict(dtype=dtype, **{'pass': name}, **row)
        if 'error' not in row:
          row['clips_per_s'] = args.batch / row['seconds']
          peer = ours.get((dtype, name))
          if peer:  # the same architecture: our FLOP count
            add_utilisation(report, row, peer['flops_per_clip'])
        report['hf'].append(row)
        print(result_line(row), flush=True)
        write_report(paths, report)


def main(argv: Optional[List[str]] = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if argv[:1] == ['--measure'] and len(argv) == 2:  # one measurement, for the command
    return child(argv[1])
  return cli.run(_main, argv)


if __name__ == '__main__':
  sys.exit(main())
