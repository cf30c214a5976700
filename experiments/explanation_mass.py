"""Does the relevance of `vivit-predict --explain` fall on what moves? On
`synthetic_motion`, whose generator knows where the object is in every frame: the
relevance mass on the object's pixels over the object's share of the frames (1: no
better than spread evenly), averaged over test clips, for trained models of each
variant and, as the baseline, the same models as initialised (`untrained_params`).

  python experiments/explanation_mass.py runs/model1 runs/model2 ... [--clips 100]

Each workdir is a run of `configs/synthetic_motion.py[:VARIANT]`. The clips are the
first of the test split, explained for their true class, each cut as the model's
frames at its stride from the first frame, whole frames: for those configs (8 frames
x stride 2 of 16, crop 32 of 32) that is its 1x1 test view.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vivit import explain, predict  # noqa: E402
from vivit.datasets import synthetic  # noqa: E402


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
    setup = predict.load(workdir)
    config = setup.model_config
    stride = setup.stride
    view = clips[:, :setup.num_frames * stride:stride]
    where = objects[:, :setup.num_frames * stride:stride]
    for method in ('rollout', 'gradient'):
      cells = []
      for params in (setup.params, explain.untrained_params(config)):
        ratios = explain.object_mass_ratios(config, params, view, where, labels, method)
        cells.append(f'{ratios.mean():.2f} ({np.median(ratios):.2f}, '
                     f'{np.mean(ratios >= 2):.0%})')
      print(f'| {config.variant} ({config.classifier}) | {method} | {cells[0]} | '
            f'{cells[1]} |', flush=True)


if __name__ == '__main__':
  main()
