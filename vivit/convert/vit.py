"""2-D ViT checkpoints -> ViViT params: the paper's initialisation (scenic's rules).

Reads an `.npz` in the google-research/vision_transformer layout (the released
ImageNet-21k `ViT-B_16.npz`, AugReg files) or a HuggingFace `ViTModel` /
`ViTForImageClassification` directory, and fills a ViViT of any variant:
- the patch kernel `[p, p, 3, D]` is inflated to the tubelet `[t, p, p, 3, D]`:
  `central_frame` (the 2-D kernel at t // 2, zeros elsewhere) or `average_frame`
  (the 2-D kernel / t in every slot); the `frame` embedding takes it as it is;
- position embeddings: `tile` (the spatial grid repeated per time slot), `resize`
  (bilinear in space, one time slot) or `resize_tile` (both); the CLS entry is kept
  where the model has a CLS token;
- model 2: the ViT fills `SpatialTransformer` (and its CLS token); the temporal
  encoder starts fresh. Model 3: the ViT's attention and LayerNorm fill the spatial
  ones; the temporal attention starts with zero output (`'zeros'`, the paper: the
  block begins as the image model) or as a copy of the spatial one (`'copy'`,
  scenic's default). Models 1 and 4 take the ViT's blocks as they are;
- the head (`head` -> `output_projection`, `pre_logits` where the model has a
  representation layer) only with `restore_head=True`, else fresh.
Note: HF's ViT ports use exact GELU and LayerNorm eps 1e-12 where the JAX ViTs and
ViViT use tanh GELU and 1e-6; their weights still load, but computations differ.
"""
import functools
import os
import re
from typing import Any, Dict, Tuple

import flax
import jax
import ml_collections
import numpy as np

from vivit.convert.resize import resize_position_embedding
from vivit.convert.transformers import (TO_OURS, hub_names, read_hf_config, read_weights,
                                       renamed)
from vivit.errors import CheckpointError, ConfigError, MissingError
from vivit.models import check_params, init_params, token_grid, variants

Params = Dict[str, Any]

# vision_transformer .npz names -> the same tensor in a ViViT model 1's layout.
NPZ_RENAMES = [
    (r'^Transformer/encoderblock_(\d+)/MultiHeadDotProductAttention_1/',
     r'Transformer/encoderblock_\1/MultiHeadDotProductAttention_0/'),
    (r'^Transformer/encoderblock_(\d+)/LayerNorm_2/', r'Transformer/encoderblock_\1/LayerNorm_1/'),
    (r'^Transformer/encoderblock_(\d+)/MlpBlock_3/', r'Transformer/encoderblock_\1/MlpBlock_0/'),
    (r'^head/', 'output_projection/'),
]
# A ViViT model 3 block's names for the ViT block's (model 1 layout) tensors.
FSA_BLOCK = {'LayerNorm_0': 'LayerNorm_space',
             'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_space',
             'LayerNorm_1': 'LayerNorm_mlp', 'MlpBlock_0': 'MlpBlock'}


def _read_hf(path: str) -> Dict[str, np.ndarray]:
  hf = read_hf_config(path)
  tensors = {re.sub(r'^vit\.', '', name): value
             for name, value in read_weights(path).items()}
  names = hub_names(hf['num_hidden_layers'], 'classifier.weight' in tensors,
                    'pooler.dense.weight' in tensors)
  flat = {}
  for hub, ours, kind in names:
    if hub not in tensors:
      raise CheckpointError(f'{path}: no tensor {hub} in the HuggingFace ViT weights')
    if kind == 'conv':  # a 2-D patch kernel [D, 3, p, p] -> [p, p, 3, D]
      flat[ours] = tensors[hub].transpose(2, 3, 1, 0)
    else:
      flat[ours] = TO_OURS[kind](tensors[hub], hf['num_attention_heads'])
  return flat


def read_vit(path: str) -> Params:
  """A ViT checkpoint's params in a ViViT model 1's names (2-D patch kernel)."""
  if not os.path.exists(path):
    raise MissingError(f'no ViT checkpoint at {path}')
  if os.path.isdir(path):
    if not os.path.exists(os.path.join(path, 'config.json')):
      raise MissingError(f'{path} is a directory without a HuggingFace config.json')
    return flax.traverse_util.unflatten_dict(_read_hf(path), sep='/')
  try:
    with np.load(path) as npz:
      flat = {renamed(name, NPZ_RENAMES): np.asarray(npz[name], np.float32)
              for name in npz.files}
  except Exception as e:  # pylint: disable=broad-except  (numpy's errors vary)
    raise CheckpointError(f'{path} is neither an .npz ViT checkpoint nor a HuggingFace '
                          f'directory ({type(e).__name__}: {e})') from None
  return flax.traverse_util.unflatten_dict(flat, sep='/')


def inflate_kernel(kernel: np.ndarray, time: int, method: str) -> np.ndarray:
  """`[p, p, 3, D]` -> `[time, p, p, 3, D]` ('central_frame' or 'average_frame')."""
  if method == 'central_frame':
    inflated = np.zeros((time,) + kernel.shape, kernel.dtype)
    inflated[time // 2] = kernel
    return inflated
  if method == 'average_frame':
    return np.repeat(kernel[None] / time, time, axis=0)
  raise ConfigError(f"unknown kernel_init {method!r}; expected 'central_frame' or "
                    f"'average_frame'")


def position_embedding(vit_posemb: np.ndarray, target_shape: Tuple[int, ...],
                       grid: Tuple[int, int], time: int, method: str) -> np.ndarray:
  """The ViT's `[1, 1 + N, D]` position embedding for `time` slots of a `grid` of
  patches, `target_shape` `[1, (1 +) time * grid, D]` (with or without CLS).

  'tile' repeats the ViT's grid per time slot; 'resize' resizes it to `grid`
  (bilinear), for one time slot; 'resize_tile' does both. (Scenic's 'resize' with
  several time slots stretches the image grid over all of them as one square; that
  is not offered.)"""
  if method not in ('tile', 'resize', 'resize_tile'):
    raise ConfigError(f"unknown posemb {method!r}; expected 'tile', 'resize' or "
                      f"'resize_tile'")
  side = int(round(np.sqrt(vit_posemb.shape[1] - 1)))
  if side * side != vit_posemb.shape[1] - 1:
    raise CheckpointError(f'ViT position embedding {vit_posemb.shape} is not a square grid '
                          f'plus CLS')
  if (side, side) != tuple(grid) and method == 'tile':
    raise ConfigError(f'the ViT has a {side}x{side} patch grid and the model '
                      f'{grid[0]}x{grid[1]}: use posemb resize or resize_tile')
  if time > 1 and method == 'resize':
    raise ConfigError(f"posemb 'resize' fills one time slot; the model has {time}: use "
                      f"'resize_tile'")
  posemb = resize_position_embedding(vit_posemb, (side, side), tuple(grid))
  cls, tokens = posemb[0, :1], np.tile(posemb[0, 1:], (time, 1))
  if target_shape[1] == tokens.shape[0] + 1:
    return np.concatenate([cls, tokens])[None]
  if target_shape[1] != tokens.shape[0]:
    raise CheckpointError(f'position embedding: the model needs {target_shape}, the ViT '
                          f'gives {tokens.shape[0]} tokens ({time} x {grid})')
  return tokens[None]


def from_vit(path: str, model_config: ml_collections.ConfigDict, **options) -> Params:
  """ViViT params for `model_config` (any variant, either embedding) initialised
  from the 2-D ViT at `path`; what the ViT has no counterpart for starts fresh
  (from `init_params(model_config, PRNGKey(seed))`). `options`: `vit_init`'s."""
  return vit_init(path, model_config, **options)[0]


def vit_init(path: str, model_config: ml_collections.ConfigDict, *,
             kernel_init: str = 'central_frame', posemb: str = 'tile',
             temporal_attention_init: str = 'zeros', restore_head: bool = False,
             seed: int = 0) -> Tuple[Params, Dict[str, Tuple[str, str]]]:
  """`from_vit`, and what happened to each parameter: {name: (status, detail)}
  with status `loaded`, `resized` (detail: from -> to shape), `fresh` or
  `ignored` (a ViT tensor the model does not use)."""
  if temporal_attention_init not in ('zeros', 'copy'):
    raise ConfigError(f"unknown temporal_attention_init {temporal_attention_init!r}; "
                      f"expected 'zeros' or 'copy'")
  vit = read_vit(path)
  params = jax.tree_util.tree_map(  # writable numpy copies
      np.array, init_params(model_config, jax.random.PRNGKey(seed)))
  report = {}
  variant = variants.get(model_config.variant)
  encoder = 'SpatialTransformer' if variant.per_frame else 'Transformer'
  cls = 'cls_SpatialTransformer' if variant.per_frame else 'cls'
  assign = functools.partial(_assign, report=report)
  put_tree = functools.partial(_put_tree, report=report)

  kernel = vit['embedding']['kernel']
  if model_config.embedding == 'tubelet':
    kernel = inflate_kernel(kernel, model_config.tubelet[0], kernel_init)
  assign(params['embedding'], 'kernel', kernel, 'embedding/kernel',
         vit['embedding']['kernel'].shape)
  assign(params['embedding'], 'bias', vit['embedding']['bias'], 'embedding/bias')
  if 'cls' not in vit:
    raise CheckpointError('the ViT has no CLS token (a GAP-pooled ViT): not supported')
  if cls in params:
    assign(params, cls, vit['cls'], cls)
  else:
    report['cls'] = ('ignored', 'the model has no CLS token')

  slots, *grid = token_grid(model_config)
  if variant.per_frame:
    slots = 1  # the spatial encoder sees one time slot at a time
  posemb_tree = params[encoder]['posembed_input']
  vit_posemb = vit['Transformer']['posembed_input']['pos_embedding']
  assign(posemb_tree, 'pos_embedding', position_embedding(
      vit_posemb, posemb_tree['pos_embedding'].shape, grid, slots, posemb),
         f'{encoder}/posembed_input/pos_embedding', vit_posemb.shape)

  vit_blocks = [k for k in vit['Transformer'] if k.startswith('encoderblock_')]
  if len(vit_blocks) != model_config.num_layers:
    raise CheckpointError(f'the ViT has {len(vit_blocks)} layers, the model '
                          f'{model_config.num_layers} ({encoder})')
  block_from_vit = variants.for_block(VIT_BLOCKS, variant.block, 'initialising from a ViT')
  for i in range(model_config.num_layers):
    block_from_vit(params[encoder][f'encoderblock_{i}'],
                   vit['Transformer'][f'encoderblock_{i}'], f'{encoder}/encoderblock_{i}',
                   put_tree=put_tree, report=report,
                   temporal_attention_init=temporal_attention_init)
  put_tree(params[encoder], 'encoder_norm', vit['Transformer']['encoder_norm'],
           f'{encoder}/encoder_norm')

  for name, vit_name in (('pre_logits', 'pre_logits'), ('output_projection', 'head')):
    if restore_head:
      if (name in vit) != (name in params):
        raise CheckpointError(f'restore_head: {name} is in the '
                              f'{"ViT" if name in vit else "model"} only')
      if name in vit:
        put_tree(params, name, vit[name], name)
      continue
    if name in vit:
      report[vit_name] = ('ignored', 'restore_head is off')
    for leaf in params.get(name, {}):
      report[f'{name}/{leaf}'] = ('fresh', 'restore_head is off')
  for name in flax.traverse_util.flatten_dict(params, sep='/'):
    report.setdefault(name, ('fresh', ''))
  check_params(model_config, params)
  return params, report


def _joint_block_from_vit(block: Params, source: Params, where: str, *, put_tree, report,
                          temporal_attention_init: str) -> None:
  """Models 1, 2 and 4: the ViT block's tensors as they are."""
  del report, temporal_attention_init  # the names match one to one
  for name in source:
    put_tree(block, name, source[name], f'{where}/{name}')


def _factorised_self_block_from_vit(block: Params, source: Params, where: str, *, put_tree,
                                    report, temporal_attention_init: str) -> None:
  """Model 3: the ViT's attention and LayerNorm fill the spatial ones; the temporal
  attention starts at zero output ('zeros') or as a copy of the spatial one ('copy')."""
  for ours, theirs in FSA_BLOCK.items():
    put_tree(block, theirs, source[ours], f'{where}/{theirs}')
  if temporal_attention_init == 'copy':
    for name in ('LayerNorm', 'MultiHeadDotProductAttention'):
      put_tree(block, f'{name}_time', source[f'{name}_0'], f'{where}/{name}_time')
    return
  attention = block['MultiHeadDotProductAttention_time']
  attention['out'] = jax.tree_util.tree_map(np.zeros_like, attention['out'])
  for leaf in flax.traverse_util.flatten_dict(attention, sep='/'):
    report[f'{where}/MultiHeadDotProductAttention_time/{leaf}'] = ('fresh', 'zero output')


# How a 2-D ViT block (model 1 names) fills an encoder block of each kind
# (`vivit.models.variants.BLOCK_KINDS`).
VIT_BLOCKS = {
    variants.JOINT_BLOCK: _joint_block_from_vit,
    variants.FACTORISED_HEADS_BLOCK: _joint_block_from_vit,
    variants.FACTORISED_SELF_ATTENTION_BLOCK: _factorised_self_block_from_vit,
}


def _assign(tree: Params, key: str, value: np.ndarray, where: str, source_shape=None, *,
            report) -> None:
  """tree[key] = value; `source_shape`: the ViT tensor's, when `value` is made from
  it with another shape."""
  if tuple(tree[key].shape) != tuple(value.shape):
    raise CheckpointError(f'cannot map the ViT onto parameter {where}: the ViT gives '
                          f'{tuple(value.shape)}, the model needs {tuple(tree[key].shape)}')
  tree[key] = value
  source_shape = tuple(value.shape if source_shape is None else source_shape)
  report[where] = (('loaded', '') if source_shape == tuple(value.shape) else
                   ('resized', f'{source_shape} -> {tuple(value.shape)}'))


def _put_tree(parent: Params, name: str, values: Params, where: str, *, report) -> None:
  """Copies the ViT subtree `values` over `parent[name]`, shape by shape."""
  for key, value in values.items():
    if isinstance(value, dict):
      _put_tree(parent[name], key, value, f'{where}/{key}', report=report)
    else:
      _assign(parent[name], key, value, f'{where}/{key}', report=report)
