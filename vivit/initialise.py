"""`config.init_from`: the starting params of a training run, from a checkpoint.

Formats (`init_from.format`; by default guessed from the path):
  vit           a 2-D ViT: vision_transformer `.npz` or HF `ViTModel` directory
                (`vivit.convert.from_vit`: kernel inflation, position embeddings
                tiled/resized, per-variant rules)
  scenic        a scenic ViViT checkpoint; `init_from.scenic_config` names the scenic
                config file it was trained with
  transformers  an HF `VivitForVideoClassification` / `VivitModel` directory
  vivit         this project's checkpoints: a params directory (`vivit.convert`),
                or a training workdir (its best params, else its latest state)
ViViT sources are fitted to the model: position embeddings are resized to its clip
size, the head is kept only with `restore_head` (and the same class count), and
every other parameter must match by name and shape.
"""
import collections
import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import flax
import jax
import ml_collections
import numpy as np
from etils import epath

from vivit import checkpoints
from vivit.convert import from_scenic, from_transformers, resize_params
from vivit.convert.resize import SIZE_FIELDS
from vivit.convert.transformers import hf_class_names
from vivit.convert.vit import vit_init
from vivit.models import init_params

Params = Dict[str, Any]
FORMATS = ('vit', 'scenic', 'transformers', 'vivit')
# The classifier: loaded only with `init_from.restore_head`.
HEAD = ('pre_logits', 'output_projection')
# Model config fields that decide the parameters (besides the clip size and head).
ARCHITECTURE_FIELDS = ('variant', 'embedding', 'tubelet', 'hidden_size', 'num_heads',
                       'num_layers', 'mlp_dim', 'classifier')


def guess_format(path: str) -> str:
  """The `init_from.format` that `path` looks like; ValueError if none."""
  directory = epath.Path(path)
  if not directory.exists():
    raise FileNotFoundError(f'checkpoint path {path} does not exist')
  scenic_name = re.compile(r'checkpoint_\d+')
  if not directory.is_dir():
    if directory.name.endswith('.npz'):
      return 'vit'
    if scenic_name.fullmatch(directory.name):
      return 'scenic'
  elif (directory / 'model_config.json').exists():
    return 'vivit'
  elif (directory / 'config.json').exists():
    model_type = json.loads((directory / 'config.json').read_text()).get('model_type')
    if model_type in ('vivit', 'vit'):
      return {'vivit': 'transformers', 'vit': 'vit'}[model_type]
  elif any(scenic_name.fullmatch(child.name) for child in directory.iterdir()):
    return 'scenic'
  raise ValueError(f'cannot tell the format of the checkpoint {path}: expected a '
                   f'vision_transformer .npz, an HF ViT or ViViT directory, a scenic '
                   f'checkpoint_<step> file or directory of them, or a vivit-jax params '
                   f'directory or workdir; set init_from.format')


def read_checkpoint(path: str, fmt: Optional[str] = None,
                    scenic_config: Optional[str] = None
                    ) -> Tuple[ml_collections.ConfigDict, Params, Any]:
  """(model config, params, class names or None) of a ViViT checkpoint in any
  format (`fmt` None: guessed): scenic (with its config file), transformers or
  vivit. Class names are a list, or {head: names} for a multi-head model."""
  init_from = ml_collections.ConfigDict(dict(path=path, format=fmt,
                                             scenic_config=scenic_config))
  return read_vivit_source(_resolved(init_from))


def read_vivit_source(init_from: ml_collections.ConfigDict
                      ) -> Tuple[ml_collections.ConfigDict, Params, Optional[List[str]]]:
  """(model config, params, class names or None) of a ViViT checkpoint in format
  scenic, transformers or vivit."""
  path, fmt = init_from.path, init_from.format
  if fmt == 'transformers':
    config, params = from_transformers(path)
    return config, params, hf_class_names(path)
  if fmt == 'scenic':
    if not init_from.get('scenic_config'):
      raise ValueError('init_from.format=scenic needs init_from.scenic_config: the '
                       'scenic config file the checkpoint was trained with')
    if not os.path.exists(init_from.scenic_config):
      raise FileNotFoundError(f'init_from.scenic_config {init_from.scenic_config} does '
                              f'not exist')
    from vivit.recipes import load_config
    config, params = from_scenic(path, load_config(init_from.scenic_config))
    return config, params, None
  if fmt == 'vit':
    raise ValueError(f'{path} is a 2-D ViT: it initialises a ViViT (init_from) but is '
                     f'not one')
  if fmt == 'vivit':
    config, params = checkpoints.load_params(path)
    return config, params, checkpoints.load_class_names(path)
  raise ValueError(f'unknown init_from.format {fmt!r}; expected one of '
                   f'{", ".join(FORMATS)}')


def model_config_from_checkpoint(init_from: ml_collections.ConfigDict,
                                 model_config: ml_collections.ConfigDict
                                 ) -> ml_collections.ConfigDict:
  """`model_config` with the architecture of the checkpoint at `init_from.path`
  (`init_from.model_from_checkpoint`); training fields (dropout, stochastic depth,
  dtype, remat) and a set `num_classes` stay as configured, and `input_size` is the
  checkpoint's until the data sets it."""
  init_from = _resolved(init_from)
  if init_from.format == 'vit':
    return model_config  # a 2-D ViT has no ViViT config: the configured one is used
  source = (checkpoints.load_model_config(init_from.path) if init_from.format == 'vivit'
            else None)
  if source is None:
    source, _, _ = read_vivit_source(init_from)
  config = source.copy_and_resolve_references()
  for field in ('dropout_rate', 'attention_dropout_rate', 'stochastic_depth',
                'fsa_stochastic_depth', 'dtype', 'remat'):
    config[field] = model_config[field]
  config.num_classes = model_config.num_classes
  return config


def _resolved(init_from: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  init_from = ml_collections.ConfigDict(init_from.to_dict())
  if not epath.Path(init_from.path).exists():
    raise FileNotFoundError(f'checkpoint path {init_from.path} does not exist')
  if not init_from.get('format'):
    init_from.format = guess_format(init_from.path)
  if init_from.format not in FORMATS:
    raise ValueError(f'unknown init_from.format {init_from.format!r}; expected one of '
                     f'{", ".join(FORMATS)}')
  return init_from


def fit_params(source_config: ml_collections.ConfigDict, source: Params,
               model_config: ml_collections.ConfigDict, *, restore_head: bool,
               seed: int = 0) -> Tuple[Params, Dict[str, Tuple[str, str]]]:
  """ViViT `source` params (of `source_config`) as the starting params of
  `model_config`: position embeddings resized to its clip size, everything else by
  name. Returns (params, {parameter: (status, detail)}) with status `loaded`,
  `resized`, `fresh` or `ignored`."""
  differing = [f for f in ARCHITECTURE_FIELDS if source_config[f] != model_config[f]]
  if model_config.variant == 'factorised_encoder':
    differing += [f'temporal.{k}' for k in ('num_layers', 'num_heads', 'mlp_dim')
                  if source_config.temporal[k] != model_config.temporal[k]]
  if model_config.variant == 'factorised_self_attention':
    differing += ['attention_order'] * (source_config.attention_order !=
                                        model_config.attention_order)
  if differing:
    raise ValueError('the checkpoint is another architecture: ' + ', '.join(
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
      raise ValueError(f'parameter {name} {tuple(value.shape)} is not in the checkpoint')
    if resized[name].shape != value.shape:
      raise ValueError(f'cannot map parameter {name}: the checkpoint has '
                       f'{tuple(resized[name].shape)}, the model needs {tuple(value.shape)}'
                       + (' (set init_from.restore_head=False for a new head)'
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
                   model_config: ml_collections.ConfigDict, seed: int = 0
                   ) -> Tuple[Params, Dict[str, Tuple[str, str]]]:
  """(params for `model_config`, per-parameter report) from `init_from`."""
  init_from = _resolved(init_from)
  if init_from.format == 'vit':
    return vit_init(init_from.path, model_config,
                    kernel_init=init_from.get('kernel_init') or 'central_frame',
                    posemb=init_from.get('posemb') or 'tile',
                    temporal_attention_init=(init_from.get('temporal_attention_init')
                                             or 'zeros'),
                    restore_head=bool(init_from.get('restore_head')), seed=seed)
  source_config, source, _ = read_vivit_source(init_from)
  return fit_params(source_config, source, model_config,
                    restore_head=bool(init_from.get('restore_head')), seed=seed)


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
