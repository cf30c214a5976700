"""Evaluate a ViViT with the multi-view test: `vivit-evaluate --config C --workdir W`.

  vivit-evaluate --config configs/synthetic_motion.py --workdir runs/demo
  vivit-evaluate --config configs/kinetics400/vivit_b_16x2.py --workdir /ckpt/k400 \\
      --checkpoint /weights/converted --config.dataset.data_dir=/data/tfds

A training workdir's evaluation runs on the data its training ran on: the dataset
and eval sections of W/config.json replace the config's, but for the fields set on
the command line (`--config.dataset.data_dir=...`); a line names what was taken. The
checkpoint's class names (class_names.json) meet the dataset's: the same names in
another order are mapped by name, other names refused (`workdir.class_order`).

Each test video gives `config.eval.num_clips` evenly spaced clips x
`config.eval.num_crops` spatial crops; logits are averaged over the views. Writes
W/eval_results.json, W/confusion_matrix.png and W/training_curve.png. W (and
--checkpoint) may be a local directory or a URL `etils.epath` supports (gs://...).
"""
import json
import sys
import time
from typing import Any, Collection, Dict, List, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from etils import epath

from vivit import checkpoints, sharding, task
from vivit import cli as cli_lib
from vivit.convert import resize_params
from vivit.hub import resolve
from vivit.input import pipeline
from vivit.models import build_model, param_shapes
from vivit.recipes import check_config
from vivit.step import average_views, head_slices
from vivit.workdir import as_path, class_order, load_class_names


# The fields of the line that says what an evaluation took from its workdir.
MAX_SHOWN = 8


def make_logits_fn(model, mesh):
  """Compiled `(params, videos [batch, views, T, H, W, 3], *extras) -> (logits [batch,
  classes], *extras)`. Views are run one at a time (a 4x3-view batch of 64 videos
  is 12 passes of 64 clips, not one of 768). `extras` (labels, masks) come back
  replicated, in the same order as the logits whatever the device layout."""
  def logits_fn(params, videos, *extras):
    by_view = jnp.moveaxis(videos, 1, 0)  # [views, batch, T, H, W, 3]
    logits = jax.lax.map(lambda clips: model.apply({'params': params}, clips), by_view)
    return (average_views(jnp.moveaxis(logits, 0, 1)),) + extras
  return jax.jit(logits_fn, out_shardings=sharding.replicated(mesh))


def classification_metrics(logits: np.ndarray, labels: np.ndarray,
                           num_classes: int) -> Dict[str, Any]:
  """top-1, top-5, per-class accuracy and confusion matrix (rows: true class)."""
  predictions = np.argmax(logits, -1)
  top5 = np.argsort(-logits, axis=-1)[:, :5]
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (labels, predictions), 1)
  per_class = confusion.diagonal() / np.maximum(confusion.sum(1), 1)
  return {'top1': float(np.mean(predictions == labels)),
          'top5': float(np.mean(np.any(top5 == labels[:, None], axis=-1))),
          'num_videos': int(len(labels)),
          'per_class_accuracy': per_class.tolist(),
          'confusion_matrix': confusion.tolist()}


def multi_head_metrics(logits: np.ndarray, labels: np.ndarray, label_heads) -> Dict[str, Any]:
  """Each head's metrics (under 'heads') and the action top-1: a clip counts when
  every head's top class is right (Epic-Kitchens' action accuracy). `labels`
  `[videos, heads]`; `label_heads` ((name, classes), ...)."""
  per_head, all_right = {}, np.ones(len(labels), bool)
  for i, (name, part) in enumerate(head_slices(label_heads)):
    per_head[name] = classification_metrics(logits[:, part], labels[:, i],
                                            part.stop - part.start)
    all_right &= np.argmax(logits[:, part], -1) == labels[:, i]
  return {'top1': float(np.mean(all_right)), 'num_videos': int(len(labels)),
          'heads': per_head,
          **{f'{name}_top1': m['top1'] for name, m in per_head.items()},
          **{f'{name}_top5': m['top5'] for name, m in per_head.items()}}


def scalar_metrics(result: Dict[str, Any]) -> Dict[str, float]:
  """The headline numbers of an evaluation, for logs: top-1, top-5 and per-head
  accuracies, and the number of videos."""
  return {k: v for k, v in result.items() if k.endswith(('top1', 'top5', 'num_videos'))}


class Progress:
  """Videos done, views per second and ETA of a pass over a split, shown by process
  0: a tqdm bar when stderr is a terminal, else a line every `every` batches (as
  often as training logs its steps)."""

  def __init__(self, split: str, num_videos: int, views: int, every: int,
               terminal: Optional[bool] = None):
    self._split, self._total, self._views, self._every = split, num_videos, views, every
    self._active = jax.process_index() == 0
    terminal = sys.stderr.isatty() if terminal is None else terminal
    self._bar = None
    if self._active and terminal:
      from tqdm import tqdm
      self._bar = tqdm(total=num_videos, desc=f'{split}: evaluating', unit='video',
                       file=sys.stderr, smoothing=0.1)
    self._done, self._batches, self._start = 0, 0, time.time()

  def update(self, videos: int) -> None:
    """`videos` more done (a batch's, all hosts')."""
    self._done, self._batches = self._done + videos, self._batches + 1
    views_per_second = self._done * self._views / max(time.time() - self._start, 1e-9)
    if self._bar is not None:
      self._bar.set_postfix_str(f'{views_per_second:.1f} views/s', refresh=False)
      self._bar.update(videos)
    elif self._active and self._batches % self._every == 0 and self._done < self._total:
      eta = (self._total - self._done) * self._views / views_per_second
      print(f'{self._split}: {self._done}/{self._total} videos | {views_per_second:.1f} '
            f'views/s | ETA {cli_lib.duration(eta)}', flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()


def evaluate_split(logits_fn, params, dataset_config: ml_collections.ConfigDict, split: str,
                   batch_size: int, labels_info, mesh, num_clips: int = 1,
                   num_crops: int = 1, stop=None, progress: Optional[Progress] = None,
                   order: Optional[List[int]] = None) -> Optional[Dict[str, Any]]:
  """Multi-view evaluation of `split` (every host its shard, metrics over all).
  `labels_info`: the dataset's `task.Labels`. `stop()`, asked after every batch
  (on every host alike), abandons the pass: the result is then None. `progress` is
  told each batch's videos. `order`: the output of each of the dataset's classes,
  where they are not in the dataset's order (`workdir.class_order`)."""
  sharding.check_batch_size(batch_size, mesh)
  batch_sharding = sharding.batch_sharding(mesh)
  all_logits, all_labels = [], []
  host_batches = pipeline.eval_batches(dataset_config, split, batch_size, num_clips,
                                       num_crops)
  for batch in sharding.prefetch(host_batches, batch_sharding):
    logits, labels, mask = (np.asarray(x) for x in logits_fn(
        params, batch['video'], batch['label'], batch['mask']))
    keep = mask > 0
    if order is not None:
      logits = logits[:, order]
    all_logits.append(logits[keep])
    all_labels.append(labels[keep])
    if progress is not None:
      progress.update(int(keep.sum()))
    if stop is not None and stop():
      return None
  all_logits, all_labels = np.concatenate(all_logits), np.concatenate(all_labels)
  if labels_info.label_heads:
    result = multi_head_metrics(all_logits, all_labels, labels_info.label_heads)
  else:
    result = classification_metrics(all_logits, all_labels, labels_info.num_classes)
  result['views'] = num_clips * num_crops
  result['num_clips'], result['num_crops'] = num_clips, num_crops
  return result


def _save_figure(fig, path: epath.PathLike) -> None:
  """`fig` as a PNG at `path` (local or a URL), then closed."""
  import matplotlib.pyplot as plt
  with epath.Path(path).open('wb') as f:
    fig.savefig(f, format='png', dpi=120)
  plt.close(fig)


def plot_confusion(confusion, class_names, path: epath.PathLike) -> None:
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  from vivit.timeline import LITERAL_TEXT
  confusion = np.asarray(confusion)
  size = max(4, 0.45 * len(class_names))
  fig, ax = plt.subplots(figsize=(size + 1, size))
  image = ax.imshow(confusion, cmap='Blues')
  ax.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=7,
                **LITERAL_TEXT)
  ax.set_yticks(range(len(class_names)), class_names, fontsize=7, **LITERAL_TEXT)
  ax.set(xlabel='predicted', ylabel='true')
  if len(class_names) <= 30:
    for (i, j), count in np.ndenumerate(confusion):
      if count:
        ax.text(j, i, str(count), ha='center', va='center', fontsize=6,
                color='white' if count > confusion.max() / 2 else 'black')
  fig.colorbar(image)
  fig.tight_layout()
  _save_figure(fig, path)


def plot_training_curve(metrics_file: epath.PathLike, path: epath.PathLike) -> bool:
  """Train loss and validation top-1 against step, from metrics.jsonl."""
  metrics_file = epath.Path(metrics_file)
  if not metrics_file.exists():
    return False
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  records = [json.loads(line) for line in metrics_file.read_text().splitlines()
             if line.strip()]
  train = [(r['step'], r['loss']) for r in records if r['split'] == 'train']
  val = [(r['step'], r['top1']) for r in records if r['split'] == 'validation']
  fig, loss_ax = plt.subplots(figsize=(7, 4))
  if train:
    loss_ax.plot(*zip(*train), color='tab:blue', label='train loss')
  loss_ax.set_xlabel('step')
  loss_ax.set_ylabel('train loss', color='tab:blue')
  if val:
    acc_ax = loss_ax.twinx()
    acc_ax.plot(*zip(*val), 'o-', color='tab:orange', label='validation top-1')
    acc_ax.set_ylabel('validation top-1', color='tab:orange')
    acc_ax.set_ylim(0, 1)
  fig.tight_layout()
  _save_figure(fig, path)
  return True


def run(config: ml_collections.ConfigDict, workdir: epath.PathLike,
        checkpoint: epath.PathLike = None, split: str = None,
        overrides: Collection[str] = ()) -> Dict[str, Any]:
  """Loads the best (or `checkpoint`) params and runs the multi-view test on the
  dataset and with the eval settings of the workdir's training (where it is one), but
  for the fields in `overrides` (the command line's: `dataset.name`, ...), which keep
  their value in `config`."""
  check_config(config)
  workdir = as_path(workdir)
  taken = task.take_workdir_settings(config, workdir, overrides)
  if taken:
    shown = taken[:MAX_SHOWN] + [f'and {len(taken) - MAX_SHOWN} more'] * (len(taken) > MAX_SHOWN)
    print(f'from {workdir}/config.json, as its training ran: {", ".join(shown)} '
          f'(--config.FIELD=VALUE to change one)', flush=True)
    check_config(config)
  split = split or config.dataset.test_split
  if checkpoint:
    checkpoint_path = resolve(checkpoint)
    model_config, params = checkpoints.load_params(checkpoint_path)
    source = checkpoint
    task.resolve_model(config, None, lambda: model_config)
  else:  # the model training recorded (a fine-tuning config may take it elsewhere)
    checkpoint_path = workdir
    task.resolve_model(config, workdir)
  # (open_dataset fits the clip size to the data)
  labels_info, (num_videos,) = task.open_dataset(config, split)
  mesh = sharding.make_mesh(config.mesh)
  if not checkpoint:
    model_config = config.model
    step, params = checkpoints.restore_best_params(
        workdir, sharding.sharded_shapes(mesh, param_shapes(model_config),
                                         config.mesh.fsdp_min_size))
    source = f'{workdir}/best/{step}'
  elif tuple(config.model.input_size) != tuple(model_config.input_size):
    print(f'resizing the position embeddings of {checkpoint} from clips '
          f'{tuple(model_config.input_size)} to {tuple(config.model.input_size)}')
    params, model_config = resize_params(params, model_config, config.model), config.model
  order = _output_order(checkpoint_path, config, labels_info)
  views = config.eval.num_clips * config.eval.num_crops
  progress = Progress(split, num_videos, views, config.training.log_every)
  try:
    result = evaluate_split(make_logits_fn(build_model(model_config), mesh), params,
                            config.dataset, split, config.eval.batch_size, labels_info,
                            mesh, config.eval.num_clips, config.eval.num_crops,
                            progress=progress, order=order)
  finally:
    progress.close()
  result.update(split=split, checkpoint=source, class_names=labels_info.class_names)
  if jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / 'eval_results.json').write_text(json.dumps(result, indent=2))
    plot_training_curve(workdir / 'metrics.jsonl', workdir / 'training_curve.png')
    views = f"({result['num_videos']} videos x {result['views']} views, {source})"
    if labels_info.label_heads:
      print(f"{split}: action top-1 {result['top1']:.4f}  " + '  '.join(
          f"{name} top-1 {result[name + '_top1']:.4f}" for name, _ in labels_info.label_heads)
            + f'  {views}')
    else:
      plot_confusion(result['confusion_matrix'], labels_info.class_names,
                     workdir / 'confusion_matrix.png')
      print(f"{split}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  {views}")
      worst = np.argsort(result['per_class_accuracy'])[:3]
      print('hardest classes: ' + ', '.join(
          f"{labels_info.class_names[i]} {result['per_class_accuracy'][i]:.3f}"
          for i in worst))
  return result


def _output_order(checkpoint: epath.PathLike, config: ml_collections.ConfigDict,
                  labels_info) -> Optional[List[int]]:
  """The order that takes the outputs of the checkpoint at `checkpoint` (a params
  directory or workdir) to the dataset's classes, None where they are already
  (`workdir.class_order`); says so where they are mapped, or are not named."""
  names = load_class_names(checkpoint, config.model.num_classes)
  order = class_order(names, labels_info.names_by_head, f'checkpoint {checkpoint}',
                      config.dataset.name,
                      'evaluate it on the dataset it was trained on (--config.dataset.name)')
  if names is None:
    print(f'warning: checkpoint {checkpoint} names no classes: its outputs are taken to '
          f'be the classes of dataset {config.dataset.name} in order', flush=True)
  elif order is not None:
    print(f'checkpoint {checkpoint} has the classes of dataset {config.dataset.name} in '
          f'another order: its outputs are mapped to them by name', flush=True)
  return order


def cli() -> None:
  """`vivit-evaluate`."""
  flags.DEFINE_string('checkpoint', None, 'A params directory (python -m vivit.convert) '
                      'or another training workdir to evaluate instead of the workdir '
                      'best; or a Hub id of one, org/name[@revision].')
  flags.DEFINE_string('split', None, 'Split to evaluate (default config.dataset.test_split).')
  cli_lib.run_config_command(
      'vivit-evaluate', __doc__, 'Training directory (reads best/, writes results).',
      lambda config, workdir: run(config, workdir, flags.FLAGS.checkpoint,
                                  flags.FLAGS.split,
                                  overrides=flags.FLAGS['config'].override_values))


if __name__ == '__main__':
  cli()
