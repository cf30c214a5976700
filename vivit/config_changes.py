"""What a resumed training may change of the config its workdir was started with
(WORKDIR/config.json): every change is printed, `old -> new`; those that break the
run's determinism or its schedule are refused unless `training.allow_changes`.
(The model's fields: `vivit.workdir.check_workdir_model`.)"""
import json
from typing import Any, Dict, List, Optional

import ml_collections

from vivit.errors import ConfigError

ACCEPTED = 'accepted'
REFUSED = 'refused'
# Accepted where the schedule does not depend on the total steps ('constant'),
# refused where it does ('cosine' decays to 0 over them).
TOTAL_STEPS = 'total steps'

# How a resumed run treats a changed field; a section stands for its fields, the
# longest name that matches decides. REFUSED: it changes the batches, augmentations,
# random streams, optimiser or learning rates of the steps to come, so that the run
# would be neither the one its checkpoints began nor the new config's.
RESUME_CHANGES = {
    'seed': REFUSED,  # the input order, augmentations, dropout
    'dataset': REFUSED,  # the examples, their order, their augmentation
    'dataset.data_dir': ACCEPTED,  # the same data, moved
    'dataset.num_threads': ACCEPTED,  # speed only
    'dataset.test_split': ACCEPTED,  # not read in training
    'training': REFUSED,  # optimiser, learning rate, schedule, batch size, loss
    # (grad_accumulation and ema_decay too: the updates' rounding, the EMA's params)
    'training.num_steps': TOTAL_STEPS,
    'training.num_epochs': TOTAL_STEPS,
    'training.log_every': ACCEPTED,
    'training.eval_every': ACCEPTED,
    'training.checkpoint_every': ACCEPTED,
    'training.keep_checkpoints': ACCEPTED,
    'training.profile_steps': ACCEPTED,  # what is traced, not what is trained
    'training.loggers': ACCEPTED,  # where metrics go
    'training.logger_project': ACCEPTED,
    'training.restart_from_scratch': ACCEPTED,
    'training.allow_changes': ACCEPTED,
    'init_from': ACCEPTED,  # a resumed run starts from its checkpoint
    'eval': ACCEPTED,  # validation in training is one view, of any batch size
    'mesh': ACCEPTED,  # a run resumes on any devices
}
# The sections compared ('model': `check_workdir_model`).
SECTIONS = ('seed', 'dataset', 'training', 'init_from', 'eval', 'mesh')


def kind(name: str) -> str:
  """RESUME_CHANGES' entry for field `name` (its own, else its section's)."""
  while name not in RESUME_CHANGES:
    if '.' not in name:
      return REFUSED  # a field nothing classifies: the safe side
    name = name.rpartition('.')[0]
  return RESUME_CHANGES[name]


def flatten(values: Any, prefix: str = '') -> Dict[str, Any]:
  """{'training.learning_rate': leaf, ...} of nested dicts (a config's JSON); a leaf
  given at the top is {`prefix` without its dot: leaf}."""
  if not isinstance(values, dict):
    return {prefix[:-1]: values}
  flat = {}
  for key, value in values.items():
    flat.update(flatten(value, f'{prefix}{key}.'))
  return flat


def _total_steps(section: Dict[str, Any], steps_per_epoch: int) -> Optional[int]:
  """The steps a training section (JSON) trains for, None for one that says none."""
  try:
    return section['num_steps'] or int(section['num_epochs'] * steps_per_epoch)
  except (KeyError, TypeError, ValueError, OverflowError):
    return None


def check_resume(stored: Optional[Dict[str, Any]], config: ml_collections.ConfigDict,
                 steps_per_epoch: int, workdir: str, step: int) -> List[str]:
  """The changes from `stored` (the JSON of WORKDIR/config.json; None: none kept) to
  `config`, resuming at `step`, as `field old -> new`; ConfigError listing the
  refused ones (see RESUME_CHANGES) unless `config.training.allow_changes`. Fields
  one side lacks (a record of another version) are left out."""
  if not isinstance(stored, dict):
    return []
  old_training = stored.get('training') if isinstance(stored.get('training'), dict) else {}
  old_total_steps = _total_steps(old_training, steps_per_epoch)
  new_total_steps = _total_steps(json.loads(config.training.to_json()), steps_per_epoch)
  new = json.loads(config.to_json())
  old_flat = {k: v for s in SECTIONS if s in stored for k, v in flatten(stored[s], s + '.').items()}
  new_flat = {k: v for s in SECTIONS if s in new for k, v in flatten(new[s], s + '.').items()}
  changed = sorted(k for k in old_flat.keys() & new_flat.keys() if old_flat[k] != new_flat[k])
  cosine = 'cosine' in (old_training.get('schedule'), config.training.schedule)

  def refused(name):
    if kind(name) == TOTAL_STEPS:
      return cosine and old_total_steps != new_total_steps
    return kind(name) == REFUSED
  lines = [f'{k} {old_flat[k]!r} -> {new_flat[k]!r}' for k in changed]
  refusals = [line for k, line in zip(changed, lines) if refused(k)]
  if refusals and not config.training.allow_changes:
    total = (f' (the cosine schedule decays over the total steps, {old_total_steps} -> '
             f'{new_total_steps})' if any(kind(k) == TOTAL_STEPS and refused(k)
                                          for k in changed) else '')
    raise ConfigError(
        f'workdir {workdir} (step {step}) was trained with other settings that change the '
        f'batches, randomness or schedule to come: {"; ".join(refusals)}{total}; resume '
        f'with the config it was written with (WORKDIR/config.json), pass '
        f'--config.training.allow_changes=True to resume with them anyway, or use a new '
        f'--workdir')
  return lines
