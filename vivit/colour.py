"""Scenic's colour augmentation (DMVR's `color_default_augm`), applied on the device
inside the train step.

The input pipeline draws each clip's factors (`vivit.input.augment.colour_draws`)
and sends them beside the clip's uint8 pixels; the arithmetic, a few dozen
operations per pixel, runs here, where it costs the accelerator next to nothing and
the input cores nothing. The formulas are those of the `tf.image` kernels that
scenic calls (RGB -> HSV -> RGB for saturation and hue), on the three channels as
separate planes.
"""
import jax.numpy as jnp

# Columns of the `[batch, 6]` draws.
JITTER, DROP, BRIGHTNESS, SATURATION, CONTRAST, HUE = range(6)
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # tf.image.rgb_to_grayscale


def _saturate(r, g, b, factor):
  """HSV saturation x `factor` (clipped to 1): each channel moves from the value (the
  largest) by the new saturation over the old; hue and value stay."""
  value = jnp.maximum(jnp.maximum(r, g), b)
  chroma = value - jnp.minimum(jnp.minimum(r, g), b)
  saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
  new = jnp.clip(saturation * factor, 0.0, 1.0)
  ratio = jnp.where(saturation > 0, new / jnp.where(saturation > 0, saturation, 1.0), 0.0)
  return [jnp.where(value > 0, value - (value - c) * ratio, value) for c in (r, g, b)]


def _contrast(planes, factor):
  """Each channel of each frame scaled by `factor` about its mean."""
  means = [jnp.mean(c, axis=(-2, -1), keepdims=True) for c in planes]
  return [(c - mean) * factor + mean for c, mean in zip(planes, means)]


def _rotate_hue(r, g, b, delta):
  """HSV hue + `delta` turns (value and chroma stay)."""
  value = jnp.maximum(jnp.maximum(r, g), b)
  chroma = value - jnp.minimum(jnp.minimum(r, g), b)
  per_sextant = jnp.where(chroma > 0, 1.0 / (6.0 * jnp.where(chroma > 0, chroma, 1.0)), 0.0)
  hue = jnp.where(r == value, per_sextant * (g - b),
                  jnp.where(g == value, 2 / 6 + per_sextant * (b - r),
                            4 / 6 + per_sextant * (r - g)))
  hue = jnp.where(chroma > 0, hue, 0.0) + delta
  sextant = (hue - jnp.floor(hue)) * 6.0
  chroma = jnp.where(value > 0, chroma, 0.0)  # as the kernel: a dark pixel stays grey

  def channel(phase):
    k = phase + sextant
    k = jnp.where(k >= 6.0, k - 6.0, k)
    return value - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)
  return [channel(5.0), channel(3.0), channel(1.0)]


def augment_colour(pixels, draws):
  """Colour jitter and colour drop of a batch of clips, one draw per clip.

  Args:
    pixels: uint8 `[batch, time, height, width, 3]`.
    draws: float32 `[batch, 6]`: jitter? (0 or 1), drop? (0 or 1), brightness delta,
      saturation factor, contrast factor, hue delta (in turns).

  Returns:
    float32 `[batch, time, height, width, 3]` in [-1, 1] (the model's input range,
    as `vivit.models.pixels_to_unit_range`): where jitter is 1, brightness, saturation,
    contrast and hue in that order, then clipped to [0, 1]; then, where drop is 1,
    grey in all three channels.
  """
  draws = jnp.asarray(draws, jnp.float32)[:, :, None, None, None]  # [batch, 6, 1, 1, 1]
  planes = [pixels[..., c].astype(jnp.float32) / 255.0 for c in range(3)]
  jittered = _saturate(*[c + draws[:, BRIGHTNESS] for c in planes], draws[:, SATURATION])
  jittered = _rotate_hue(*_contrast(jittered, draws[:, CONTRAST]), draws[:, HUE])
  planes = [jnp.where(draws[:, JITTER] > 0, jnp.clip(new, 0.0, 1.0), old)
            for new, old in zip(jittered, planes)]
  grey = sum(w * c for w, c in zip(GREY_WEIGHTS, planes))
  planes = [jnp.where(draws[:, DROP] > 0, grey, c) for c in planes]
  return jnp.stack(planes, axis=-1) * 2.0 - 1.0
