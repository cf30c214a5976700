"""The experiment trackers a training also logs to (`training.loggers`): Weights &
Biases and MLflow, each through its optional extra. `vivit.workdir.MetricWriter`
runs them beside metrics.jsonl and TensorBoard, on host 0, and keeps their run
ids in WORKDIR/trackers.json so that a resumed training continues the same runs.

A tracker is a class of TRACKERS: made with (the run's name, the project, a local
directory for its files or None, the run id a previous start stored or None, the
hyperparameters), it holds `run_id` and has `write(step, split, metrics)` and
`close(failed)`. Its package is imported when it is made, never at module level.
"""
import importlib
import json
import os
import secrets
import time
from typing import Any, Dict, Iterable, Optional

from vivit import verbose
from vivit.config_changes import flatten
from vivit.errors import ConfigError

# What `training.loggers` may name: TensorBoard (MetricWriter's own) and TRACKERS
# (below). metrics.jsonl is always written.
NAMES = ('tensorboard', 'wandb', 'mlflow')


def check_names(names: Any) -> None:
  """ConfigError unless `names` (`training.loggers`) is a tuple of distinct NAMES."""
  if not (isinstance(names, (tuple, list)) and all(isinstance(n, str) for n in names)
          and len(set(names)) == len(names) and set(names) <= set(NAMES)):
    raise ConfigError(f'training.loggers={names!r} is not a tuple of distinct names '
                      f'from {", ".join(map(repr, NAMES))} (metrics.jsonl is always '
                      f'written)')


def require(names: Iterable[str]) -> None:
  """Imports the package of each tracker in `names`: a ModuleNotFoundError for a
  missing one (`vivit.cli.run` names its extra), before a run writes anything."""
  for name in names:
    if name in TRACKERS:
      importlib.import_module(name)  # each tracker's package is named as it is


def hyperparameters(config: Dict[str, Any], record: Optional[Dict[str, Any]]
                    ) -> Dict[str, Any]:
  """The run's config (a JSON object) and its run record (`vivit.run_record`, under
  `run.`) flattened to {'training.learning_rate': 0.1, 'run.versions.jax': ...};
  values are JSON scalars or lists."""
  return {**flatten(config), **flatten(record or {}, 'run.')}


class Wandb:
  """A Weights & Biases run (`wandb.init`): online, or offline under DIRECTORY/wandb/
  with WANDB_MODE=offline (upload later with `wandb sync`); wandb's other settings
  from its environment variables (WANDB_API_KEY, WANDB_ENTITY...)."""

  def __init__(self, name: str, project: str, directory: Optional[str],
               run_id: Optional[str], params: Dict[str, Any]):
    import wandb
    self.run_id = run_id or secrets.token_hex(8)
    # Silent: wandb's own lines (a history summary at the end) go to its log files.
    self._run = wandb.init(
        project=project, name=name, dir=directory, id=self.run_id, resume='allow',
        settings=wandb.Settings(console='off', silent=not verbose()))
    self._run.config.update(params, allow_val_change=True)
    if self._run.disabled:
      where = 'disabled by WANDB_MODE'
    elif self._run.offline:
      where = f'{os.path.dirname(self._run.dir)}: upload it with wandb sync'
    else:
      where = self._run.url
    print(f'logging to W&B run {self.run_id} of project {project} ({where})', flush=True)

  def write(self, step: int, split: str, metrics: Dict[str, float]) -> None:
    self._run.log({f'{split}/{k}': v for k, v in metrics.items()}, step=step)

  def close(self, failed: bool) -> None:
    self._run.finish(exit_code=int(failed))


class Mlflow:
  """An MLflow run in experiment `project` of the tracking server or store of
  MLFLOW_TRACKING_URI, else a file store in DIRECTORY/mlruns. The hyperparameters
  are its params (cut to MLflow's lengths); a resumed run keeps the params of its
  first start and sets each changed one as a tag of the same name."""

  def __init__(self, name: str, project: str, directory: Optional[str],
               run_id: Optional[str], params: Dict[str, Any]):
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient
    from mlflow.utils import validation
    self._metric = Metric
    uri = os.environ.get('MLFLOW_TRACKING_URI')
    if not uri:
      if directory is None:
        raise ValueError('the workdir is not local: set MLFLOW_TRACKING_URI')
      uri = 'file://' + os.path.join(directory, 'mlruns')
      # MLflow 3 refuses new file stores unless this is set; its database stores
      # need SQLAlchemy, which mlflow-skinny lacks.
      os.environ.setdefault('MLFLOW_ALLOW_FILE_STORE', 'true')
    self._client = client = MlflowClient(uri)
    run = None
    if run_id:
      try:
        run = client.get_run(run_id)
      except MlflowException:
        run = None  # another store: a new run
    if run is None:
      experiment = client.get_experiment_by_name(project)
      experiment_id = (experiment.experiment_id if experiment else
                       client.create_experiment(project))
      run = client.create_run(experiment_id, run_name=name)
    else:
      client.update_run(run.info.run_id, status='RUNNING')
    self.run_id = run.info.run_id
    key_length = validation.MAX_ENTITY_KEY_LENGTH
    shown = {k[:key_length]: (v if isinstance(v, str) else json.dumps(v))
             for k, v in params.items()}
    logged, tagged = run.data.params, run.data.tags
    new = [Param(k, v[:validation.MAX_PARAM_VAL_LENGTH]) for k, v in shown.items()
           if k not in logged]
    # A tag once set follows the value, back to the param's too.
    changed = [RunTag(k, v[:validation.MAX_TAG_VAL_LENGTH]) for k, v in shown.items()
               if k in logged and (k in tagged or
                                   logged[k] != v[:validation.MAX_PARAM_VAL_LENGTH])]
    batch = validation.MAX_PARAMS_TAGS_PER_BATCH
    for i in range(0, len(new), batch):
      client.log_batch(self.run_id, params=new[i:i + batch])
    for i in range(0, len(changed), batch):
      client.log_batch(self.run_id, tags=changed[i:i + batch])
    print(f'logging to MLflow run {self.run_id} of experiment {project} ({uri})',
          flush=True)

  def write(self, step: int, split: str, metrics: Dict[str, float]) -> None:
    now = int(time.time() * 1000)
    self._client.log_batch(self.run_id, metrics=[
        self._metric(f'{split}/{k}', v, now, step) for k, v in metrics.items()])

  def close(self, failed: bool) -> None:
    self._client.set_terminated(self.run_id, 'FAILED' if failed else 'FINISHED')


TRACKERS = {'wandb': Wandb, 'mlflow': Mlflow}
