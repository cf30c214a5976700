"""Does the relevance of `vivit-predict --explain` fall on what moves? On
`synthetic_motion`, whose generator knows where the object is in every frame: the
relevance mass on the object's pixels over the object's share of the frames (1: no
better than spread evenly), averaged over test clips, for trained models of each
variant and, as the baseline, the same models as initialised (`untrained_params`).
The measures (`object_mass_ratio(s)`) are here; tests/test_relevance.py checks them.

  python experiments/explanation_mass.py runs/model1 runs/model2 ... [--clips 100]

Each workdir is a run of `configs/synthetic_motion.py[:VARIANT]`. The clips are the
first of the test split, explained for their true class, each cut as the model's
frames at its stride from the first frame, whole frames: for those configs (8 frames
x stride 2 of 16, crop 32 of 32) that is its 1x1 test view.
"""
import argparse
import os
import sys
from typing import Sequence

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vivit import inference  # noqa: E402
from vivit.datasets import synthetic  # noqa: E402
from vivit.models import embedded_frames, init_params  # noqa: E402
from vivit.relevance import pixel_relevance, token_relevance  # noqa: E402


def object_mass_ratio(pixels: np.ndarray, mask: np.ndarray, frames: Sequence[int]
                      ) -> np.ndarray:
  """Per clip: the relevance mass on the object (`mask [batch, time, height, width]`,
  True on its pixels) over the share of the `frames` seen that the object covers.
  1 is what relevance spread evenly gives; 2 is twice that."""
  mass = (pixels * mask).sum((1, 2, 3)) / np.maximum(pixels.sum((1, 2, 3)), 1e-30)
  return mass / mask[:, frames].mean((1, 2, 3))


def object_mass_ratios(model_config, params, clips, objects, targets, method: str
                       ) -> np.ndarray:
  """`object_mass_ratio` per clip of the relevance of `clips` `[batch, time, height,
  width, 3]` to the logits `targets` by `method`, `objects` `[batch, time, height,
  width]` True where the object is (a dataset that knows, as `synthetic_motion`)."""
  tokens, _ = token_relevance(model_config, params, clips, targets, method)
  pixels = pixel_relevance(tokens, model_config, clips.shape[1:4])
  return object_mass_ratio(pixels, objects, embedded_frames(model_config, clips.shape[1]))


def untrained_params(model_config, seed: int = 0):
  """The baseline of a model that has learnt nothing: params as initialised, except
  the head, drawn like a dense layer's (it starts at zero, which would zero every
  gradient and leave 'gradient' relevance empty)."""
  params = init_params(model_config, jax.random.PRNGKey(seed))
  head = params['output_projection']['kernel']
  params['output_projection']['kernel'] = np.random.RandomState(seed).normal(
      0, head.shape[0] ** -0.5, head.shape).astype(np.float32)
  return params


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('workdirs', nargs='+')
  parser.add_argument('--clips', type=int, default=100)
  args = parser.parse_args()
  clips, objects, labels = map(np.stack, zip(*synthetic.examples('test', args.clips)))
  print(f'{args.clips} test clips; object mass / area share (mean, median, clips >= 2)')
  print('| variant | method | trained | untrained |')
  print('|---|---|---|---|')
  for workdir in args.workdirs:
    setup = inference.load(workdir)
    config = setup.model_config
    stride = setup.stride
    view = clips[:, :setup.num_frames * stride:stride]
    where = objects[:, :setup.num_frames * stride:stride]
    for method in ('rollout', 'gradient'):
      cells = []
      for params in (setup.params, untrained_params(config)):
        ratios = object_mass_ratios(config, params, view, where, labels, method)
        cells.append(f'{ratios.mean():.2f} ({np.median(ratios):.2f}, '
                     f'{np.mean(ratios >= 2):.0%})')
      print(f'| {config.variant} ({config.classifier}) | {method} | {cells[0]} | '
            f'{cells[1]} |', flush=True)


if __name__ == '__main__':
  main()
