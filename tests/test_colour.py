"""Scenic's colour augmentation on the device (vivit.colour), against the tf.image ops
scenic runs in its input pipeline."""
import numpy as np
import tensorflow as tf

from vivit.colour import augment_colour
from vivit.input import augment


def tf_image_colour(video, draws):
  """Scenic's colour augmentation of float `[time, h, w, 3]` in [0, 1] with the
  `tf.image` ops it calls, given one clip's `[6]` draws: the reference."""
  jitter, drop, brightness, saturation, contrast, hue = (float(d) for d in draws)
  if jitter:
    video = tf.image.adjust_brightness(video, brightness)
    video = tf.image.adjust_saturation(video, saturation)
    video = tf.image.adjust_contrast(video, contrast)
    video = tf.clip_by_value(tf.image.adjust_hue(video, hue), 0.0, 1.0)
  if drop:
    video = tf.tile(tf.image.rgb_to_grayscale(video), [1, 1, 1, 3])
  return video


def test_colour_on_the_device_is_tf_images_and_the_same_for_every_frame():
  """`vivit.colour.augment_colour` (jax, on the batch) against the tf.image ops scenic
  runs, with black, white and grey pixels among random ones; a still clip stays still."""
  rng = np.random.RandomState(0)
  pixels = rng.randint(0, 256, (5, 3, 6, 6, 3)).astype(np.uint8)
  pixels[0, :, :2] = 0
  pixels[1, :, :2] = 255
  pixels[2, :, :2] = pixels[2, :, :2, :, :1]
  pixels[4] = pixels[4, :1]
  for s in range(8):
    draws = np.stack([augment.colour_draws(0.8, 0.3, tf.constant([s, i])).numpy()
                      for i in range(5)])
    out = np.asarray(augment_colour(pixels, draws))
    for clip, clip_draws, new in zip(pixels, draws, out):
      reference = tf_image_colour(tf.constant(clip / 255.0, tf.float32), clip_draws)
      np.testing.assert_allclose(new, reference.numpy() * 2 - 1, atol=2e-5)
    np.testing.assert_allclose(out[4, 0], out[4, 2], atol=1e-6)
  assert np.abs(augment_colour(pixels, np.zeros((5, 6))) * 127.5 + 127.5 - pixels).max() < 1e-3
