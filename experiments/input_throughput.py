"""Is training bound by the input pipeline or by the model? One run, this machine.

Measures, for 32-frame 224x224 training clips (stride 2, short side 256, scale
jitter, flip, colour jitter: the Kinetics recipe):
- input pipeline clips/s (read + JPEG decode of the clip's frames + augment +
  batch) with 1 thread and with one per core, and clips/s per core;
- peak host memory of the pipeline, and the time to the first batch at the start
  of an epoch vs at its end (a resumed run);
- the train step time of `--model` for the same batch (forward, backward, SGD).

  python experiments/input_throughput.py                    # synthesised dataset
  python experiments/input_throughput.py --dataset kinetics400 --data_dir /data/tfds
  python experiments/input_throughput.py --input_clips_per_core 8 --model B/16x2  # GPU host

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


def dataset_config(name: str, data_dir: str, threads: int):
  import ml_collections
  return ml_collections.ConfigDict(dict(
      name=name, format='tfds', data_dir=data_dir, label_key=('label',), train_split='train',
      num_frames=32, stride=2, min_resize=256, crop_size=224, scale_jitter=(0.9, 1.33),
      flip=True, colour_augment=0.8, colour_drop=0.1, randaugment=None,
      num_threads=threads, shuffle_buffer=1024, shuffle_frames=False))


def input_rate(config, batch_size: int, steps: int, start_step: int = 0):
  """(seconds to the first batch, clips/s over the next `steps` batches)."""
  from vivit.input import pipeline
  start = time.perf_counter()
  batches = pipeline.train_batches(config, batch_size, seed=0, start_step=start_step)
  next(batches)
  first = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  return first, steps * batch_size / (time.perf_counter() - start)


def train_step_seconds(model_name: str, batch_size: int, num_classes: int = 400,
                       **overrides) -> float:
  import jax
  import jax.numpy as jnp
  import ml_collections
  from vivit.models import build_model, get_model_config, init_params
  from vivit.optim import make_optimizer
  from vivit.step import TrainState, train_step
  config = get_model_config(model_name, num_classes=num_classes, input_size=(32, 224, 224),
                            **overrides)
  model = build_model(config)
  training = ml_collections.ConfigDict(dict(
      optimizer='sgd', learning_rate=0.1, momentum=0.9, weight_decay=0.0,
      schedule='constant', grad_clip=1.0, label_smoothing=0.0, mixup=0.0))
  optimizer, _ = make_optimizer(training, 100, 0)
  params = init_params(config, jax.random.PRNGKey(0))
  state = TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params))
  step = jax.jit(lambda s, b: train_step(s, b, model=model, optimizer=optimizer,
                                         training=training, num_classes=num_classes,
                                         seed=0), donate_argnums=0)
  batch = {'video': jnp.zeros((batch_size, 32, 224, 224, 3), jnp.float32),
           'label': jnp.zeros((batch_size,), jnp.int32)}
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
  parser.add_argument('--batch_size', type=int, default=8)
  parser.add_argument('--steps', type=int, default=6, help='batches timed per setting')
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
  import tensorflow_datasets as tfds
  builder = tfds.builder(args.dataset, data_dir=args.data_dir)
  split = builder.info.splits['train']
  print(f'dataset: {split.num_examples} train videos, {split.num_bytes / 2**20:.0f} MiB '
        f'({split.num_bytes / split.num_examples / 2**20:.2f} MiB per video)')

  print(f'\ninput pipeline, batches of {args.batch_size} x 32 x 224 x 224:')
  rows = []
  for threads in sorted({1, cores}):
    config = dataset_config(args.dataset, args.data_dir, threads)
    with PeakMemory() as memory:
      first, rate = input_rate(config, args.batch_size, args.steps)
    rows.append((threads, rate))
    print(f'  {threads:2d} threads: {rate:6.1f} clips/s ({rate / threads:.1f} per core); '
          f'peak RSS +{(memory.peak - memory.start) / 2**20:.0f} MiB over '
          f'{memory.start / 2**20:.0f} MiB')
  steps_per_epoch = split.num_examples // args.batch_size
  config = dataset_config(args.dataset, args.data_dir, cores)
  at_start = input_rate(config, args.batch_size, 1)[0]
  at_end = input_rate(config, args.batch_size, 1, start_step=steps_per_epoch - 1)[0]
  print(f'  first batch: {at_start:.2f} s at step 0, {at_end:.2f} s when resuming at step '
        f'{steps_per_epoch - 1} (the end of epoch 0)')

  if args.model != 'none':
    report_model(args, rows[-1][1] / rows[-1][0], rows[-1])


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
