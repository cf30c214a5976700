"""How much do `dataset.resample='one_pass'` training views differ from scenic's?

For the same draws (clip, jittered size, crop, flip), compares the one-pass view
(resizes composed into one bilinear sampling, rounded) with scenic's (DMVR's two
resizes, each truncated to uint8: `dataset.resample='scenic'`, bit-exact with DMVR):
PSNR of one against the other, the mean level difference (one pass minus scenic), and
the edge energy ratio (mean squared difference of neighbouring pixels, one pass over
scenic: above 1, scenic's second pass blurred).

Frames: uniform noise in cells of 1 pixel (the worst case) and of 4 pixels, stored at
several sizes, for the Kinetics recipe (short side 256, crop 224) and SSv2's (288,
256).

  python experiments/resample_difference.py
"""
import argparse

import numpy as np


def texture(height: int, width: int, scale: int, seed: int = 0) -> np.ndarray:
  """`[2, height, width, 3]` uint8: uniform noise of `scale`-pixel cells, resized
  bilinearly to the frame (1: every pixel drawn apart, the worst case)."""
  import tensorflow as tf
  rng = np.random.default_rng(seed)
  cells = rng.integers(0, 256, (2, -(-height // scale), -(-width // scale), 3))
  return tf.cast(tf.image.resize(cells.astype(np.float32), (height, width)), tf.uint8).numpy()


def edge_energy(views: np.ndarray) -> float:
  views = views.astype(np.float64)
  return float(np.mean(np.diff(views, axis=2) ** 2) + np.mean(np.diff(views, axis=3) ** 2))


def compare(frames: np.ndarray, min_resize: int, crop_size: int, draws: int):
  import tensorflow as tf
  from vivit.input import crop
  video = tf.constant(frames)
  kwargs = dict(num_frames=2, stride=1, min_resize=min_resize, crop_size=crop_size,
                scale_range=(0.9, 1.33), flip=True)
  scenic, one_pass = [], []
  for s in range(draws):
    seed = tf.constant([s, 0], tf.int64)
    scenic.append(crop.train_view(video, seed=seed, **kwargs).numpy())
    one_pass.append(crop.train_view(video, seed=seed, resample='one_pass', **kwargs).numpy())
  scenic, one_pass = np.stack(scenic).astype(np.float64), np.stack(one_pass).astype(np.float64)
  mse = np.mean((scenic - one_pass) ** 2)
  return (10 * np.log10(255 ** 2 / mse), float(np.mean(one_pass - scenic)),
          edge_energy(one_pass) / edge_energy(scenic))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--draws', type=int, default=32, help='views per row')
  args = parser.parse_args()
  print('| texture | stored frames | recipe (short side / crop) | PSNR one pass vs scenic | '
        'mean level, one pass - scenic | edge energy, one pass / scenic |')
  print('|---|---|---|---|---|---|')
  for scale in (1, 4):
    for (height, width) in ((256, 340), (360, 480), (128, 170)):
      for min_resize, crop_size, recipe in ((256, 224, 'Kinetics'), (288, 256, 'SSv2')):
        psnr, level, edges = compare(texture(height, width, scale), min_resize, crop_size,
                                     args.draws)
        print(f'| {scale} px cells | {width}x{height} | {recipe} ({min_resize}/{crop_size}) '
              f'| {psnr:.1f} dB | {level:+.2f} | {edges:.2f} |')


if __name__ == '__main__':
  main()
