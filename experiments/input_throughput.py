"""Is training bound by the input pipeline or by the model? One run, this machine.

Measures, for 32-frame 224x224 training clips (stride 2, short side 256, scale
jitter, flip, colour jitter: the Kinetics recipe):
- input pipeline clips/s (read + JPEG decode of the crop's window of the clip's
  frames + augment + batch) with 1 thread and with one per core, and clips/s per
  core, for each `dataset.resample` mode (`--resample`: scenic's two passes, which
  skip the first when the frames are stored at `--min_resize`, and one pass); the colour jitter's arithmetic runs in the train step on the device, and is
  timed apart (on this machine's JAX backend);
- its limit: the same stream of clips (read, parse, pick the clip's frames, batch)
  with nothing done but JPEG-decoding exactly the frames each clip uses at their
  stored size, and the pipeline as a fraction of that;
- peak host memory of the pipeline, and the time to the first batch at the start
  of an epoch vs at its end (a resumed run);
- the train step time of `--model` for the same batch (forward, backward, SGD).

  python experiments/input_throughput.py                    # synthesised dataset
  python experiments/input_throughput.py --dataset kinetics400 --data_dir /data/tfds
  python experiments/input_throughput.py --input_clips_per_core 8 --model B/16x2  # GPU host
  python experiments/input_throughput.py --min_resize 288 --crop_size 256  # SSv2's sizes
  PYTHONPATH=/path/to/other/checkout python experiments/input_throughput.py  # its pipeline

Without --data_dir it writes `--videos` 340x256 mp4s of moving texture (`--seconds`
long) and prepares them with `vivit.prepare video_folder` first (also timed).
"""
import argparse
import os
import tempfile
import threading
import time

import numpy as np


def synthesise_videos(root: str, count: int, seconds: float = 10.0, fps: int = 25):
  """`count` H.264 clips of drifting noise texture (JPEG sizes like real footage's
  rather than flat colour's) in a `<split>/<class>/` tree."""
  import av
  rng = np.random.default_rng(0)
  for i in range(count):
    path = os.path.join(root, 'train', f'class{i % 4}', f'clip{i:04d}.mp4')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    texture = (rng.random((384, 480, 3)) * 255).astype(np.uint8)
    texture = np.clip(np.cumsum(texture.astype(np.int32) - 127, axis=1) // 8 + 128, 0,
                      255).astype(np.uint8)
    with av.open(path, 'w') as container:
      stream = container.add_stream('libx264', rate=fps)
      stream.height, stream.width, stream.pix_fmt = 256, 340, 'yuv420p'
      stream.options = {'preset': 'veryfast', 'crf': '23'}
      for t in range(int(seconds * fps)):
        frame = texture[t % 128:t % 128 + 256, t % 140:t % 140 + 340]
        for packet in stream.encode(av.VideoFrame.from_ndarray(
            np.ascontiguousarray(frame), format='rgb24')):
          container.mux(packet)
      for packet in stream.encode():
        container.mux(packet)


class PeakMemory:
  """Peak resident memory of this process while running, sampled every 20 ms."""

  def __enter__(self):
    import psutil
    self._process, self.peak, self._running = psutil.Process(), 0, True
    self.start = self._process.memory_info().rss
    self._thread = threading.Thread(target=self._sample, daemon=True)
    self._thread.start()
    return self

  def _sample(self):
    while self._running:
      self.peak = max(self.peak, self._process.memory_info().rss)
      time.sleep(0.02)

  def __exit__(self, *exc):
    self._running = False
    self._thread.join()


def dataset_config(name: str, data_dir: str, threads: int, resample: str = 'scenic',
                   min_resize: int = 256, crop_size: int = 224):
  import ml_collections
  from vivit.recipes import base_config
  fields = dict(
      name=name, format='tfds', data_dir=data_dir, label_key=('label',), train_split='train',
      num_frames=32, stride=2, min_resize=min_resize, crop_size=crop_size,
      scale_jitter=(0.9, 1.33), flip=True, colour_augment=0.8, colour_drop=0.1,
      randaugment=None, num_threads=threads, shuffle_buffer=1024, shuffle_frames=False)
  known = base_config().dataset  # fields an older checkout (PYTHONPATH) lacks stay out
  fields.update({key: value for key, value in (('augment_ops', known.get('augment_ops')),
                                               ('resample', resample)) if key in known})
  return ml_collections.ConfigDict(fields)


def timed(batches, batch_size: int, steps: int):
  """(clips/s, clips per CPU second of this process) over `steps` batches, after
  one more batch of warm-up (one-off compilation). On a shared machine the second
  is the per-core rate: it does not count the time other processes hold the cores."""
  next(batches)
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(steps):
    next(batches)
  clips = steps * batch_size
  return clips / (time.perf_counter() - wall), clips / (time.process_time() - cpu)


def input_rate(config, batch_size: int, steps: int, start_step: int = 0):
  """(seconds to the first batch, clips/s and clips per CPU second over `steps`
  batches after a second one)."""
  from vivit.input import pipeline
  start = time.perf_counter()
  batches = pipeline.train_batches(config, batch_size, seed=0, start_step=start_step)
  next(batches)
  first = time.perf_counter() - start
  if not steps:
    return first, None
  return first, timed(batches, batch_size, steps)


def decode_limit_rate(config, batch_size: int, steps: int):
  """(clips/s, clips per CPU second) of the limit: `input_rate`'s stream, reading and JPEG-decoding (whole,
  at the stored size) the frames of each clip, nothing else."""
  import tensorflow as tf
  from vivit.input import pipeline, sources
  try:
    from vivit.input import sampling
  except ImportError:  # a checkout before 2026-12-07
    from vivit.input import transforms as sampling
  source = pipeline.open_source(config, config.train_split)

  def decode(position, serialized):
    video, label = source.parse(serialized)
    seed = tf.stack([tf.constant(sources.stream_seed(0), tf.int64), position])
    offset_seed = sampling.split_seed(sampling.split_seed(seed, 2)[0], 4)[0]
    count = tf.shape(video)[0]
    indices = sampling.clip_indices(count, config.num_frames, config.stride,
                                    sampling.random_offset(
                                        count, config.num_frames, config.stride,
                                        offset_seed))
    return {'video': sampling.gather_frames(video, indices), 'label': label}

  batches = pipeline._batches(config, source.train_stream(0, batch_size, 0), decode,
                              batch_size, drop_remainder=True)
  next(batches)
  return timed(batches, batch_size, steps)


def colour_seconds(batch_size: int):
  """(seconds, device kind) of `vivit.colour.augment_colour` on a batch of 32x224x224
  clips, jitted, on JAX's default device: the device's share of the augmentation."""
  import jax
  import jax.numpy as jnp
  try:
    from vivit.colour import augment_colour
  except ImportError:  # a checkout whose pipeline does the colour (PYTHONPATH=...)
    return None
  pixels = jax.random.randint(jax.random.PRNGKey(0), (batch_size, 32, 224, 224, 3), 0, 256
                              ).astype(jnp.uint8)
  draws = jnp.tile(jnp.array([1, 0, 0.1, 1.2, 0.8, 0.1]), (batch_size, 1))
  colour = jax.jit(augment_colour)
  colour(pixels, draws).block_until_ready()
  times = []
  for _ in range(3):
    start = time.perf_counter()
    colour(pixels, draws).block_until_ready()
    times.append(time.perf_counter() - start)
  return min(times), jax.devices()[0].device_kind


def train_step_seconds(model_name: str, batch_size: int, num_classes: int = 400,
                       **overrides) -> float:
  import jax
  import jax.numpy as jnp
  from vivit.models import build_model, get_model_config, init_params
  from vivit.optim import make_optimizer
  from vivit.step import initial_state, train_step
  config = get_model_config(model_name, num_classes=num_classes, input_size=(32, 224, 224),
                            **overrides)
  model = build_model(config)
  from vivit.recipes import base_config
  training = base_config().training  # every field the step reads, at its default
  training.update(optimizer='sgd', learning_rate=0.1, momentum=0.9, weight_decay=0.0,
                  schedule='constant', grad_clip=1.0, grad_clip_group=None,
                  label_smoothing=0.0, mixup=0.0)
  optimizer, _ = make_optimizer(training, 100, 0)
  params = init_params(config, jax.random.PRNGKey(0))
  state = initial_state(params, optimizer, training)
  step = jax.jit(lambda s, b: train_step(s, b, model=model, optimizer=optimizer,
                                         training=training, num_classes=num_classes,
                                         seed=0), donate_argnums=0)
  # uint8 pixels and colour draws (jitter all): the device's share of the augmentation
  batch = {'video': jnp.zeros((batch_size, 32, 224, 224, 3), jnp.uint8),
           'label': jnp.zeros((batch_size,), jnp.int32),
           'colour': jnp.tile(jnp.array([1, 0, 0.1, 1.2, 0.8, 0.1]), (batch_size, 1))}
  state, metrics = step(state, batch)  # compile
  jax.block_until_ready(metrics)
  times = []
  for _ in range(2):
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - start)
  return min(times)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--dataset', default='video_folder')
  parser.add_argument('--data_dir', help='a prepared dataset; default: synthesise one')
  parser.add_argument('--videos', type=int, default=48, help='videos to synthesise')
  parser.add_argument('--seconds', type=float, default=10.0,
                      help='length of each synthesised video')
  parser.add_argument('--resample', default='scenic,one_pass',
                      help="the dataset.resample modes to time, comma-separated")
  parser.add_argument('--min_resize', type=int, default=256,
                      help='short side of the training resize (SSv2: 288; the synthesised '
                      'frames are stored at 256, where the first resize is skipped)')
  parser.add_argument('--crop_size', type=int, default=224)
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--steps', type=int, default=12, help='batches timed per run')
  parser.add_argument('--from_disk', action='store_true',
                      help='read records through the feeder thread even if the split '
                      'would be held in memory')
  parser.add_argument('--repeats', type=int, default=3,
                      help='timings per setting (medians are reported)')
  parser.add_argument('--model', default='B/16x2',
                      help="model for the train-step time ('none' to skip)")
  parser.add_argument('--dtype', default='float32', help='model compute dtype')
  parser.add_argument('--remat', action='store_true', help='rematerialise each block')
  parser.add_argument('--input_clips_per_core', type=float,
                      help='skip the input pipeline (on a machine without TensorFlow) and '
                      'compare the model with this rate, measured elsewhere')
  args = parser.parse_args()
  cores = os.cpu_count()
  if args.input_clips_per_core:
    report_model(args, args.input_clips_per_core, None)
    return

  if args.data_dir is None:
    from vivit import prepare
    args.data_dir = tempfile.mkdtemp(prefix='vivit_throughput_')
    videos = os.path.join(args.data_dir, 'videos')
    start = time.perf_counter()
    synthesise_videos(videos, args.videos, args.seconds)
    print(f'wrote {args.videos} {args.seconds:g} s 340x256 mp4s in '
          f'{time.perf_counter() - start:.0f} s')
    start = time.perf_counter()
    prepare.prepare(prepare.parse_args(['video_folder', '--videos', videos, '--data_dir',
                                        args.data_dir, '--workers', str(cores)]))
    seconds = time.perf_counter() - start
    print(f'prepare: {args.videos / seconds:.2f} videos/s with {cores} workers '
          f'({args.videos / seconds / cores:.2f} videos/s per core)')
  if args.from_disk:
    from vivit.input import sources
    sources.IN_MEMORY_BYTES = 0
  import tensorflow_datasets as tfds
  builder = tfds.builder(args.dataset, data_dir=args.data_dir)
  split = builder.info.splits['train']
  print(f'dataset: {split.num_examples} train videos, {split.num_bytes / 2**20:.0f} MiB '
        f'({split.num_bytes / split.num_examples / 2**20:.2f} MiB per video)')

  from vivit.recipes import base_config
  modes = [m for m in args.resample.split(',') if 'resample' in base_config().dataset] or [
      'the checkout\'s']
  print(f'\ninput pipeline, batches of {args.batch_size} x 32 x {args.crop_size} x '
        f'{args.crop_size}, short side {args.min_resize} (medians of {args.repeats} runs, '
        f'the resample modes and the limit alternating):')
  rows = []
  for threads in sorted({1, cores}):
    configs = {mode: dataset_config(args.dataset, args.data_dir, threads, mode,
                                    args.min_resize, args.crop_size) for mode in modes}
    runs, limits, peaks = {mode: [] for mode in modes}, [], {mode: [] for mode in modes}
    for _ in range(args.repeats):
      for mode, config in configs.items():
        with PeakMemory() as memory:
          runs[mode].append(input_rate(config, args.batch_size, args.steps)[1])
        peaks[mode].append(memory.peak - memory.start)
      limits.append(decode_limit_rate(config, args.batch_size, args.steps))
    limit, limit_per_cpu = np.median(limits, 0)
    for mode in modes:
      rate, per_cpu = np.median(runs[mode], 0)
      rows.append((threads, rate, per_cpu))
      print(f'  {threads:2d} threads, resample {mode}: pipeline {rate:5.1f} clips/s '
            f'({rate / threads:.1f} per core), {per_cpu:5.1f} clips per CPU second (runs: '
            f'{", ".join(f"{r[1]:.1f}" for r in runs[mode])}); peak RSS '
            f'+{max(peaks[mode]) / 2**20:.0f} MiB over {memory.start / 2**20:.0f} MiB; '
            f'{per_cpu / limit_per_cpu:.0%} of the limit per CPU second')
    print(f'  {threads:2d} threads, decode-only limit {limit:5.1f} clips/s ({limit / threads:.1f} '
          f'per core), {limit_per_cpu:5.1f} clips per CPU second (runs: '
          f'{", ".join(f"{r[1]:.1f}" for r in limits)})')
  steps_per_epoch = split.num_examples // args.batch_size
  config = dataset_config(args.dataset, args.data_dir, cores, modes[0], args.min_resize,
                          args.crop_size)
  at_start = input_rate(config, args.batch_size, 0)[0]
  at_end = input_rate(config, args.batch_size, 0, start_step=steps_per_epoch - 1)[0]
  print(f'  first batch: {at_start:.2f} s at step 0, {at_end:.2f} s when resuming at step '
        f'{steps_per_epoch - 1} (the end of epoch 0)')
  colour = colour_seconds(args.batch_size)
  if colour:
    print(f'  colour augmentation in the train step on {colour[1]}: {colour[0] * 1e3:.1f} '
          f'ms per batch of {args.batch_size} ({args.batch_size / colour[0]:.0f} clips/s)')

  if args.model != 'none':
    most = [row for row in rows if row[0] == rows[-1][0]][0]  # all threads, first mode
    report_model(args, most[2], most[:2])


def report_model(args, input_per_core: float, input_row) -> None:
  import jax
  seconds = train_step_seconds(args.model, args.batch_size, dtype=args.dtype,
                               remat=args.remat)
  model_rate = args.batch_size / seconds
  print(f'\nmodel {args.model} ({args.dtype}{", remat" if args.remat else ""}) train '
        f'step, batch {args.batch_size}, on {jax.devices()[0].device_kind}: '
        f'{seconds:.3f} s ({model_rate:.2f} clips/s)')
  if input_row:
    threads, rate = input_row
    print(f'input / model: {rate / model_rate:.2f} with {threads} input threads')
  print(f'{model_rate / input_per_core:.2g} input cores (at {input_per_core:.1f} clips/s '
        f'each) keep this model busy')


if __name__ == '__main__':
  main()
