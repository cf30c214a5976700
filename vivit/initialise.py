"""`config.init_from`: the starting params of a training run (with
`model_from_checkpoint`, its model too) from any checkpoint `vivit.convert.read` reads.
ViViT sources are fitted to the model: position embeddings resized to its clip size,
the head kept only with `restore_head` (its outputs matched to the dataset's classes
by name), every other parameter matched by name and shape.
"""
import collections
import re
from typing import Any, Dict, List, Optional, Tuple

import flax
import jax
import ml_collections
import numpy as np

from vivit.convert.read import checkpoint_format, read_checkpoint, read_model_config
from vivit.convert.resize import SIZE_FIELDS, resize_params
from vivit.convert.vit import vit_init
from vivit.errors import CheckpointError, ConfigError
from vivit.hub import resolve
from vivit.models import init_params, variants
from vivit.workdir import class_order

Params = Dict[str, Any]
# The classifier: loaded only with `init_from.restore_head`.
HEAD = ('pre_logits', 'output_projection')
OUTPUTS = 'output_projection'  # the layer with an output per class
# Model config fields that decide the parameters (besides the clip size and head).
ARCHITECTURE_FIELDS = ('variant', 'embedding', 'tubelet', 'hidden_size', 'num_heads',
                       'num_layers', 'mlp_dim', 'classifier')


def resolve_init_from(init_from: ml_collections.ConfigDict
                      ) -> Optional[ml_collections.ConfigDict]:
  """`init_from` if a training run starts from its checkpoint, None if from random
  params; refuses a config that needs a checkpoint and names none."""
  if not init_from.path:
    if init_from.model_from_checkpoint:
      raise ConfigError('this config takes its model from a checkpoint: set '
                        '--config.init_from.path')
    if not init_from.from_scratch:
      raise ConfigError('this recipe fine-tunes a pretrained model (the paper: an '
                        'ImageNet-21k ViT, e.g. ViT-B_16.npz): set --config.init_from.'
                        'path, or --config.init_from.from_scratch=True to start from '
                        'random weights on purpose')
    return None
  return init_from


def model_config_from_checkpoint(init_from: ml_collections.ConfigDict,
                                 model_config: ml_collections.ConfigDict
                                 ) -> ml_collections.ConfigDict:
  """`model_config` with the architecture of the checkpoint at `init_from.path`
  (`init_from.model_from_checkpoint`); training fields (dropout, stochastic depth,
  dtype, remat) and a set `num_classes` stay as configured, and `input_size` is the
  checkpoint's until the data sets it."""
  source = read_model_config(init_from.path, init_from.format, init_from.scenic_config)
  if source is None:
    return model_config  # a 2-D ViT has no ViViT config: the configured one is used
  config = source.copy_and_resolve_references()
  for field in ('dropout_rate', 'attention_dropout_rate', 'stochastic_depth',
                'fsa_stochastic_depth', 'dtype', 'remat'):
    config[field] = model_config[field]
  config.num_classes = model_config.num_classes
  return config


def fit_params(source_config: ml_collections.ConfigDict, source: Params,
               model_config: ml_collections.ConfigDict, *, restore_head: bool,
               seed: int = 0) -> Tuple[Params, Dict[str, Tuple[str, str]]]:
  """ViViT `source` params (of `source_config`) as the starting params of
  `model_config`: position embeddings resized to its clip size, everything else by
  name. Returns (params, {parameter: (status, detail)}) with status `loaded`,
  `resized`, `fresh` or `ignored`."""
  differing = [f for f in ARCHITECTURE_FIELDS if source_config[f] != model_config[f]]
  if variants.get(model_config.variant).per_frame:
    differing += [f'temporal.{k}' for k in ('num_layers', 'num_heads', 'mlp_dim')
                  if source_config.temporal[k] != model_config.temporal[k]]
  if model_config.variant == variants.FACTORISED_SELF_ATTENTION:
    differing += ['attention_order'] * (source_config.attention_order !=
                                        model_config.attention_order)
  if differing:
    raise CheckpointError('the checkpoint is another architecture: ' + ', '.join(
        f'model.{f} is {_field(model_config, f)!r} here, {_field(source_config, f)!r} in '
        f'the checkpoint' for f in differing) +
        '. Use the checkpoint\'s (init_from.model_from_checkpoint=True, as '
        'configs/finetune.py) or change the model config.')
  sized = source_config.copy_and_resolve_references()
  for field in SIZE_FIELDS:
    sized[field] = model_config[field]
  resized = flax.traverse_util.flatten_dict(
      resize_params(source, source_config, sized), sep='/')
  original = flax.traverse_util.flatten_dict(source, sep='/')
  fresh = flax.traverse_util.flatten_dict(
      jax.tree_util.tree_map(np.asarray, init_params(model_config, jax.random.PRNGKey(seed))),
      sep='/')
  params, report = {}, {}
  for name, value in fresh.items():
    if name.split('/')[0] in HEAD and not restore_head:
      params[name], report[name] = value, ('fresh', 'restore_head is off')
      continue
    if name not in resized:
      raise CheckpointError(f'parameter {name} {tuple(value.shape)} is not in the '
                            f'checkpoint')
    if resized[name].shape != value.shape:
      raise CheckpointError(
          f'cannot map parameter {name}: the checkpoint has {tuple(resized[name].shape)}'
          f', the model needs {tuple(value.shape)}' +
          (' (set init_from.restore_head=False for a new head)'
           if name.split('/')[0] in HEAD else ''))
    params[name] = resized[name]
    before = tuple(original[name].shape)
    report[name] = (('resized', f'{before} -> {tuple(value.shape)}')
                    if before != tuple(value.shape) else ('loaded', ''))
  for name in resized.keys() - fresh.keys():
    report[name] = ('ignored', 'not in the model')
  return flax.traverse_util.unflatten_dict(params, sep='/'), report


def _field(config, name):
  section, _, field = name.partition('.')
  return config[section][field] if field else config[section]


def initial_params(init_from: ml_collections.ConfigDict,
                   model_config: ml_collections.ConfigDict, seed: int = 0,
                   class_names=None, dataset: str = 'the dataset'
                   ) -> Tuple[Params, Dict[str, Tuple[str, str]]]:
  """(params for `model_config`, per-parameter report) from `init_from`. A head
  kept (`restore_head`) meets `class_names`, the classes of `dataset` (a list, or
  {head: names}): its outputs are matched to them by name (`match_head`)."""
  path = resolve(init_from.path)  # a Hub id's snapshot, fetched once for both readers
  if checkpoint_format(path, init_from.format) == 'vit':
    params, report = vit_init(path, model_config, kernel_init=init_from.kernel_init,
                              posemb=init_from.posemb,
                              temporal_attention_init=init_from.temporal_attention_init,
                              restore_head=init_from.restore_head, seed=seed)
    names = None  # a 2-D ViT's classes are not named
  else:
    source_config, source, names = read_checkpoint(path, init_from.format,
                                                   init_from.scenic_config)
    params, report = fit_params(source_config, source, model_config,
                                restore_head=init_from.restore_head, seed=seed)
  if init_from.restore_head and class_names is not None and OUTPUTS in params:
    params = match_head(params, report, names, class_names, f'checkpoint {init_from.path}',
                        dataset)
  return params, report


def match_head(params: Params, report: Dict[str, Tuple[str, str]], names, class_names,
               checkpoint: str, dataset: str) -> Params:
  """`params` whose kept head (`OUTPUTS`, named by the checkpoint's class `names`)
  has its outputs in the order of `class_names`, the classes of `dataset`, matched
  by name (`workdir.class_order`: CheckpointError for other names); the head's
  report says how. Unnamed outputs are kept in order (and the report says so)."""
  order = class_order(names, class_names, checkpoint, dataset,
                      'set init_from.restore_head=False to train a new head')
  if names is None:
    note = ('loaded', 'by position: the checkpoint names no classes')
  elif order is None:
    return params
  else:
    note = ('loaded', f'classes mapped by name to the order of {dataset}')
    params = dict(params, **{OUTPUTS: {
        'kernel': np.asarray(params[OUTPUTS]['kernel'])[:, order],
        'bias': np.asarray(params[OUTPUTS]['bias'])[order]}})
  for leaf in params[OUTPUTS]:
    report[f'{OUTPUTS}/{leaf}'] = note
  return params


def report_lines(report: Dict[str, Tuple[str, str]]) -> List[str]:
  """One line per parameter group: a module, or an encoder block (consecutive
  blocks with the same outcome on one line), e.g.
  `Transformer/posembed_input: resized (1, 197, 768) -> (1, 3137, 768)`."""
  groups: Dict[str, Dict[Optional[str], Dict[str, str]]] = {}
  for name in sorted(report, key=_natural):
    parts = name.split('/')
    if len(parts) > 2 and parts[1].startswith('encoderblock_'):
      group, module = '/'.join(parts[:2]), parts[2]
    else:
      group, module = '/'.join(parts[:-1]) or name, None
    groups.setdefault(group, {}).setdefault(module, {})[parts[-1]] = _outcome(*report[name])
  merged = []  # [group or block prefix, first block, last block, text]
  for group, modules in groups.items():
    texts = {}
    for module, leaves in modules.items():
      outcomes = sorted(set(leaves.values()))
      texts[module] = (outcomes[0] if len(outcomes) == 1 else
                       '; '.join(f'{leaf} {outcome}' for leaf, outcome in leaves.items()))
    common = collections.Counter(texts.values()).most_common(1)[0][0]
    others = [f'{module} {text}' for module, text in texts.items() if text != common]
    text = common + (f' (except {"; ".join(others)})' if others else '')
    block = re.fullmatch(r'(.*encoderblock_)(\d+)', group)
    if block:
      prefix, number = block.group(1), int(block.group(2))
      if merged and merged[-1][0] == prefix and merged[-1][3] == text and (
          merged[-1][2] == number - 1):
        merged[-1][2] = number
      else:
        merged.append([prefix, number, number, text])
    else:
      merged.append([group, None, None, text])
  return [f'{group}: {text}' if first is None else
          f'{group}{first}' + (f'..{last}' if last != first else '') + f': {text}'
          for group, first, last, text in merged]


def _outcome(status: str, detail: str) -> str:
  if status == 'resized':
    return f'resized {detail}'
  return status + (f' ({detail})' if detail else '')


def _natural(name: str):
  """Sort key with encoderblock_10 after encoderblock_9."""
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', name)]
