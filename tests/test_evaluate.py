"""Evaluation's parts (`vivit.evaluate`): view averaging (`vivit.step`'s) and metrics
against a hand computation, the progress bar. (Evaluating a trained workdir end to
end: tests/test_train.py.)"""
import numpy as np

from vivit import evaluate, step


def test_view_averaging_against_hand_computation():
  logits = np.array([[[1.0, 0.0, 3.0], [3.0, 2.0, -1.0]],     # mean [2, 1, 1]   -> 0
                     [[0.0, 4.0, 0.0], [0.0, -2.0, 2.0]]])    # mean [0, 1, 1]   -> 1 (first max)
  averaged = np.asarray(step.average_views(logits))
  np.testing.assert_allclose(averaged, [[2, 1, 1], [0, 1, 1]])
  metrics = evaluate.classification_metrics(averaged, np.array([0, 2]), num_classes=3)
  assert metrics['top1'] == 0.5
  assert metrics['top5'] == 1.0
  assert metrics['per_class_accuracy'] == [1.0, 0.0, 0.0]
  assert metrics['confusion_matrix'] == [[1, 0, 0], [0, 0, 0], [0, 1, 0]]


def test_progress_bar_on_a_terminal(capsys):
  progress = evaluate.Progress('test', 20, 6, every=1, terminal=True)
  progress.update(8)
  progress.update(12)
  progress.close()
  out, err = capsys.readouterr()
  assert not out and 'test: evaluating' in err and '20/20' in err and 'views/s' in err
