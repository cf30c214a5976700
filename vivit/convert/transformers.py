"""HuggingFace transformers ViViT (model 1) <-> vivit-jax params.

HF's image processor maps pixels to [-3, 1] (rescale to [-1, 1], then mean/std 0.5),
while the released weights (scenic's) and this project expect [-1, 1]. The
converted models compute the same function of the same tensor; `to_hf_pixel_values`
and `from_hf_pixel_values` only move the channel axis, so feed HF models the
[-1, 1] video to reproduce scenic's accuracy. HF's ViT shares the layout and the
names: `hub_names`, `TO_OURS` and `read_weights` also read it (`vivit.convert.vit`).
"""
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

import flax
import ml_collections
import numpy as np

from vivit.checkpoints import first_line
from vivit.convert.resize import resized
from vivit.errors import CheckpointError, MissingError
from vivit.models import check_params, default_model_config, variants
from vivit.workdir import check_class_names, read_record

Params = Dict[str, Any]
_TANH_GELUS = ('gelu_fast', 'gelu_new', 'gelu_pytorch_tanh')
_WEIGHT_FILES = ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin')


def to_hf_pixel_values(video: np.ndarray) -> np.ndarray:
  """`[batch, time, height, width, 3]` -> HF `pixel_values [batch, time, 3, h, w]`."""
  return np.transpose(video, (0, 1, 4, 2, 3))


def from_hf_pixel_values(pixel_values: np.ndarray) -> np.ndarray:
  """HF `pixel_values [batch, time, 3, h, w]` -> `[batch, time, height, width, 3]`."""
  return np.transpose(pixel_values, (0, 1, 3, 4, 2))


def _weight_and_bias(hub: str, ours: str, kind: str, weight: str = 'kernel',
                     bias_kind: str = 'copy'):
  return [(hub + '.weight', f'{ours}/{weight}', kind),
          (hub + '.bias', ours + '/bias', bias_kind)]


def _joint_block_names(hub: str, ours: str):
  """A pre-LayerNorm ViT block's tensors: HF names under `hub`, ours under `ours`."""
  attn, mlp = ours + 'MultiHeadDotProductAttention_0/', ours + 'MlpBlock_0/'
  names = []
  for hub_ln, our_ln in (('layernorm_before', 'LayerNorm_0'),
                         ('layernorm_after', 'LayerNorm_1')):
    names += _weight_and_bias(hub + hub_ln, ours + our_ln, 'copy', 'scale')
  for proj in ('query', 'key', 'value'):
    names += _weight_and_bias(f'{hub}attention.attention.{proj}', attn + proj, 'qkv',
                              bias_kind='qkv_bias')
  names += _weight_and_bias(hub + 'attention.output.dense', attn + 'out', 'out')
  names += _weight_and_bias(hub + 'intermediate.dense', mlp + 'Dense_0', 'dense')
  names += _weight_and_bias(hub + 'output.dense', mlp + 'Dense_1', 'dense')
  return names


# The tensor names of an encoder block of each kind (`variants.BLOCK_KINDS`) in HF's
# ViViT / ViT.
HF_BLOCKS = {
    variants.JOINT_BLOCK: _joint_block_names,
    variants.FACTORISED_SELF_ATTENTION_BLOCK: variants.Unsupported(
        'transformers has no factorised self-attention block (model 3)'),
    variants.FACTORISED_HEADS_BLOCK: variants.Unsupported(
        'transformers has no factorised dot-product attention (model 4)'),
}


def hub_names(num_layers: int, has_classifier: bool, has_pooler: bool,
              block_kind: str = variants.JOINT_BLOCK):
  """(hub name, our '/'-joined path, kind) for every tensor, kind saying how the
  layouts differ (`TO_OURS`, `TO_HF`)."""
  block_names = variants.for_block(HF_BLOCKS, block_kind, 'HuggingFace conversion')
  names = _weight_and_bias('embeddings.patch_embeddings.projection', 'embedding', 'conv')
  names += [('embeddings.cls_token', 'cls', 'copy'),
            ('embeddings.position_embeddings', 'Transformer/posembed_input/pos_embedding',
             'copy')]
  names += _weight_and_bias('layernorm', 'Transformer/encoder_norm', 'copy', 'scale')
  for i in range(num_layers):
    names += block_names(f'encoder.layer.{i}.', f'Transformer/encoderblock_{i}/')
  if has_pooler:
    names += _weight_and_bias('pooler.dense', 'pre_logits', 'dense')
  if has_classifier:
    names += _weight_and_bias('classifier', 'output_projection', 'dense')
  return names


# Each kind's layout (`hub_names`), HF's -> ours (n: the attention head count) and back.
TO_OURS = {
    'copy': lambda x, n: x,
    'conv': lambda x, n: x.transpose(2, 3, 4, 1, 0),  # [D, 3, t, h, w] -> [t, h, w, 3, D]
    'dense': lambda x, n: x.T,  # torch Linear [out, in] -> [in, out]
    'qkv': lambda x, n: x.T.reshape(x.shape[1], n, -1),  # [n*hd, D] -> [D, n, hd]
    'qkv_bias': lambda x, n: x.reshape(n, -1),  # [n*hd] -> [n, hd]
    'out': lambda x, n: x.T.reshape(n, -1, x.shape[0]),  # [D, n*hd] -> [n, hd, D]
}
TO_HF = {
    'copy': lambda x: x,
    'conv': lambda x: x.transpose(4, 3, 0, 1, 2),
    'dense': lambda x: x.T,
    'qkv': lambda x: x.reshape(x.shape[0], -1).T,
    'qkv_bias': lambda x: x.reshape(-1),
    'out': lambda x: x.reshape(-1, x.shape[-1]).T,
}


# Saved names -> hub names (a classifier's `vivit.` prefix; newer transformers' names).
_RENAMES = [
    (r'^vivit\.', ''),
    (r'^layers\.(\d+)\.attention\.q_proj\.', r'encoder.layer.\1.attention.attention.query.'),
    (r'^layers\.(\d+)\.attention\.k_proj\.', r'encoder.layer.\1.attention.attention.key.'),
    (r'^layers\.(\d+)\.attention\.v_proj\.', r'encoder.layer.\1.attention.attention.value.'),
    (r'^layers\.(\d+)\.attention\.o_proj\.', r'encoder.layer.\1.attention.output.dense.'),
    (r'^layers\.(\d+)\.mlp\.fc1\.', r'encoder.layer.\1.intermediate.dense.'),
    (r'^layers\.(\d+)\.mlp\.fc2\.', r'encoder.layer.\1.output.dense.'),
    (r'^layers\.(\d+)\.', r'encoder.layer.\1.'),
]


def renamed(name: str, renames: Sequence[Tuple[str, str]]) -> str:
  """`name` with each (pattern, replacement) of `renames` applied in turn."""
  for pattern, replacement in renames:
    name = re.sub(pattern, replacement, name)
  return name


def read_weights(path: str) -> Dict[str, np.ndarray]:
  """All tensors of a `save_pretrained` directory, as float32 numpy, hub names.
  Untrusted input: CheckpointError, one line naming the file, for a damaged or
  Git-LFS-pointer weight file or a shard index that names files outside `path`
  (those are never read)."""
  files = [f for f in _WEIGHT_FILES if os.path.exists(os.path.join(path, f))]
  if not files:
    raise MissingError(f'{path} holds no HuggingFace weights (looked for '
                       f'{", ".join(_WEIGHT_FILES)})')
  name = files[0]
  shards = _shards(path, name) if name.endswith('.index.json') else [name]
  tensors = {}
  for shard in shards:
    tensors.update(_read_weight_file(os.path.join(path, shard)))
  return {renamed(k, _RENAMES): np.asarray(v, np.float32) for k, v in tensors.items()}


def _shards(path: str, index: str) -> List[str]:
  """The weight files a sharded checkpoint's index names: plain names of files in
  `path` or its subdirectories, never absolute or with `..` parts."""
  index_file = os.path.join(path, index)
  weight_map = read_record(index_file, 'a safetensors shard index')
  weight_map = weight_map.get('weight_map') if isinstance(weight_map, dict) else None
  if not (isinstance(weight_map, dict) and weight_map and
          all(isinstance(v, str) for v in weight_map.values())):
    raise CheckpointError(f'{index_file} is not a safetensors shard index: no '
                          f'"weight_map" of tensor names to file names')
  shards = sorted(set(weight_map.values()))
  for shard in shards:
    parts = shard.replace('\\', '/').split('/')
    if os.path.isabs(shard) or '..' in parts or '' in parts or ':' in shard:
      raise CheckpointError(f'{index_file} names weight file {shard!r} outside the '
                            f'checkpoint directory {path}; refused, nothing read')
    if not os.path.isfile(os.path.join(path, shard)):
      raise CheckpointError(f'{index_file} names weight file {shard}, which {path} '
                            f'does not hold')
  return shards


# What a Git LFS pointer file starts with: a clone without `git lfs pull`.
_LFS_POINTER = b'version https://git-lfs.github.com/spec/'


def _read_weight_file(weight_file: str) -> Dict[str, Any]:
  """The tensors of one safetensors or (legacy) PyTorch weight file."""
  with open(weight_file, 'rb') as f:
    if f.read(len(_LFS_POINTER)) == _LFS_POINTER:
      raise CheckpointError(f'{weight_file} is a Git LFS pointer, not the weights: '
                            f'fetch them (git lfs pull) or download the model again')
  try:
    if weight_file.endswith('.bin'):
      import torch  # Only for the legacy pickle format.
      state = torch.load(weight_file, map_location='cpu', weights_only=True)
      return {k: v.float().numpy() for k, v in state.items()}
    from safetensors.numpy import load_file
    return load_file(weight_file)
  except ModuleNotFoundError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (each reader has its own errors)
    raise CheckpointError(f'{weight_file} cannot be read as weights (damaged or '
                          f'truncated?): {first_line(str(e))}') from None


def _naming(path: str, error: CheckpointError) -> CheckpointError:
  """`error`, its message prefixed by the checkpoint `path` unless it names it."""
  return error if path in str(error) else CheckpointError(f'{path}: {error}')


def read_hf_config(path: str) -> Dict[str, Any]:
  """The `config.json` of an HF model directory, a JSON object (CheckpointError
  naming the file otherwise)."""
  config_file = os.path.join(path, 'config.json')
  hf = read_record(config_file, 'an HF model config')
  if not isinstance(hf, dict):
    raise CheckpointError(f'{config_file} is not an HF model config: a JSON '
                          f'{type(hf).__name__}, not an object')
  return hf


def _hf_field(hf: Dict[str, Any], key: str, kind, default=None):
  """`hf[key]` (else `default`; required if None), CheckpointError unless it is of
  `kind`: 'size' (an integer >= 1), 'sizes' (a list of them), 'number'."""
  value = hf.get(key, default)
  if value is None:
    raise CheckpointError(f'config.json has no {key}')
  whole = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1
  fits = {'size': whole, 'sizes': lambda v: isinstance(v, list) and all(map(whole, v)),
          'number': lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)
                               and np.isfinite(v))}[kind](value)
  if not fits:
    expected = {'size': 'an integer >= 1', 'sizes': 'a list of integers >= 1',
                'number': 'a finite number'}[kind]
    raise CheckpointError(f'config.json: {key} is {json.dumps(value)[:60]}; expected '
                          f'{expected}')
  return value


def _id2label(hf: Dict[str, Any]) -> List[Any]:
  """The values of HF's `id2label`, in class order: its keys must be the class
  indices 0..n-1 (as JSON writes them, strings)."""
  id2label = hf.get('id2label') or {}
  if not isinstance(id2label, dict):
    raise CheckpointError(f'config.json: id2label is a JSON {type(id2label).__name__},'
                          f' not an object of class index -> name')
  indices = {}
  for key in id2label:
    try:
      indices[int(key)] = key
    except ValueError:
      raise CheckpointError(f'config.json: id2label has the key {key[:40]!r}; expected '
                            f'class indices 0..{len(id2label) - 1}') from None
  if sorted(indices) != list(range(len(id2label))):
    raise CheckpointError(f'config.json: id2label\'s keys are not the class indices '
                          f'0..{len(id2label) - 1}')
  return [id2label[indices[i]] for i in range(len(id2label))]


def _model_config_from_hf(hf: Dict[str, Any], has_classifier: bool,
                          has_pooler: bool) -> ml_collections.ConfigDict:
  if hf.get('model_type') != 'vivit':
    raise CheckpointError(f"config.json has model_type {hf.get('model_type')!r}, not "
                          f"'vivit'")
  act = hf.get('hidden_act', 'gelu_fast')
  if act not in _TANH_GELUS:
    raise CheckpointError(f'hidden_act {act!r} is not supported: vivit-jax uses the '
                          f'tanh GELU ({", ".join(_TANH_GELUS)})')
  eps = _hf_field(hf, 'layer_norm_eps', 'number', 1e-6)
  if abs(eps - 1e-6) > 1e-12:
    raise CheckpointError(f'layer_norm_eps {eps} is not supported (vivit-jax uses 1e-6)')
  if hf.get('num_channels', 3) != 3:
    raise CheckpointError(f"num_channels {hf['num_channels']} is not supported (RGB only)")
  hidden = _hf_field(hf, 'hidden_size', 'size')
  heads = _hf_field(hf, 'num_attention_heads', 'size')
  if hf.get('head_dim') not in (None, hidden // heads) or hidden % heads:
    raise CheckpointError(f'head_dim {hf.get("head_dim")} with hidden_size {hidden} and '
                          f'{heads} heads is not supported (need hidden = heads * '
                          f'head_dim)')
  if has_pooler and hf.get('pooler_act', 'tanh') != 'tanh':
    raise CheckpointError(f"pooler_act {hf['pooler_act']!r} is not supported (tanh only)")
  image = _hf_field(hf, 'image_size', 'size', 224)
  tubelet = _hf_field(hf, 'tubelet_size', 'sizes', [2, 16, 16])
  if len(tubelet) != 3:
    raise CheckpointError(f'config.json: tubelet_size {tubelet}; expected 3 sizes')
  config = default_model_config()
  config.update(dict(
      variant=variants.SPATIO_TEMPORAL, embedding='tubelet', tubelet=tuple(tubelet),
      input_size=(_hf_field(hf, 'num_frames', 'size', 32), image, image),
      hidden_size=hidden, num_heads=heads,
      num_layers=_hf_field(hf, 'num_hidden_layers', 'size'),
      mlp_dim=_hf_field(hf, 'intermediate_size', 'size'), classifier='token',
      num_classes=len(_id2label(hf)) if has_classifier else 0))
  if has_pooler:
    config.representation_size = hf.get('pooler_output_size') or hidden
  return config


def hf_class_names(path: str, num_classes: Optional[int] = None) -> Optional[List[str]]:
  """The `id2label` names of an HF model directory, in class order (None if it has
  none or only HF's `LABEL_i` placeholders); `num_classes` of them if given
  (`check_class_names`)."""
  try:
    names = _id2label(read_hf_config(path))
  except CheckpointError as e:
    raise _naming(path, e) from None
  if not names or names == [f'LABEL_{i}' for i in range(len(names))]:
    return None
  check_class_names(names, os.path.join(path, 'config.json') + ' id2label', num_classes)
  return names


def from_transformers(path: str, input_size: Optional[Sequence[int]] = None
                      ) -> Tuple[ml_collections.ConfigDict, Params]:
  """Reads a `save_pretrained` directory of `VivitForVideoClassification` or
  `VivitModel`; with `input_size` (time, height, width), resized to that clip size
  (`vivit.convert.resize_params`).

  A `VivitModel` with its pooler becomes `representation_size=hidden` and
  `num_classes=0`: the model then returns HF's `pooler_output`.

  Returns:
    (model config, params) with scenic/vivit-jax parameter names.
  """
  config_file = os.path.join(path, 'config.json')
  if not os.path.exists(config_file):
    raise MissingError(f'{path} is not a HuggingFace model directory (no config.json)')
  try:
    hf = read_hf_config(path)
    weights = read_weights(path)
    config, flat = _our_tensors(hf, weights, path)
  except CheckpointError as e:
    raise _naming(path, e) from None
  params = flax.traverse_util.unflatten_dict(flat, sep='/')
  check_params(config, params)
  return resized(params, config, input_size)


def _our_tensors(hf: Dict[str, Any], weights: Dict[str, np.ndarray], path: str
                 ) -> Tuple[ml_collections.ConfigDict, Dict[str, np.ndarray]]:
  """(model config, {our '/'-joined name: tensor}) of HF's config and tensors."""
  stored_layers = {int(m[1]) for m in map(re.compile(r'encoder\.layer\.(\d+)\.').match,
                                          weights) if m}
  declared = _hf_field(hf, 'num_hidden_layers', 'size')
  if declared > len(stored_layers):  # (checked first: the names of each are listed)
    raise CheckpointError(f'config.json declares {declared} layers, the weights hold '
                          f'{len(stored_layers)}')
  has_classifier = 'classifier.weight' in weights
  has_pooler = 'pooler.dense.weight' in weights and not has_classifier
  config = _model_config_from_hf(hf, has_classifier, has_pooler)
  if has_classifier:
    config.num_classes = weights['classifier.weight'].shape[0]
  flat = {}
  for hub, ours, kind in hub_names(config.num_layers, has_classifier, has_pooler):
    if hub not in weights:
      if kind == 'qkv_bias' and not hf.get('qkv_bias', True):
        flat[ours] = np.zeros((config.num_heads, config.hidden_size // config.num_heads),
                              np.float32)
        continue
      raise CheckpointError(f'{path}: tensor {hub} is missing from the checkpoint')
    try:
      flat[ours] = TO_OURS[kind](weights[hub], config.num_heads)
    except ValueError:  # a shape the layout change cannot take
      raise CheckpointError(f'{path}: tensor {hub} has shape {weights[hub].shape}, '
                            f'which does not fit config.json (hidden_size '
                            f'{config.hidden_size}, {config.num_heads} heads)') from None
  return config, flat


def check_exportable(model_config: ml_collections.ConfigDict) -> None:
  """CheckpointError naming every reason `model_config` has no transformers
  equivalent: transformers has model 1 with tubelet embedding, token classifier and a
  square input only."""
  reasons = []
  if model_config.variant != variants.SPATIO_TEMPORAL:
    reasons.append(f'variant {model_config.variant!r} (HF has {variants.SPATIO_TEMPORAL} '
                   f'only)')
  if model_config.embedding != 'tubelet':
    reasons.append(f'embedding {model_config.embedding!r} (HF has tubelet only)')
  if model_config.classifier != 'token':
    reasons.append(f'classifier {model_config.classifier!r} (HF uses the CLS token)')
  if model_config.representation_size is not None and model_config.num_classes:
    reasons.append('representation_size with a classifier (HF has no pre-logits '
                   'layer before its classifier)')
  _, height, width = model_config.input_size
  if height != width:
    reasons.append(f'non-square input {height}x{width} (HF has one image_size)')
  if reasons:
    raise CheckpointError('cannot export to transformers: ' + '; '.join(reasons))


def to_transformers(model_config: ml_collections.ConfigDict, params: Params, path: str,
                    class_names: Optional[Sequence[str]] = None) -> None:
  """Writes a directory `VivitForVideoClassification.from_pretrained` loads, its
  `id2label` the `class_names` (`LABEL_i` without). `vivit.export` (`vivit-export
  --format transformers`) takes a checkpoint's own names.

  Only what `check_exportable` allows; anything else raises CheckpointError.
  """
  from safetensors.numpy import save_file
  from transformers import VivitConfig
  check_exportable(model_config)
  frames, height, _ = model_config.input_size
  check_params(model_config, params)
  num_classes = model_config.num_classes
  if class_names is not None and len(class_names) != num_classes:
    raise CheckpointError(f'{len(class_names)} class names for {num_classes} classes')
  labels = list(class_names or [f'LABEL_{i}' for i in range(num_classes)])
  has_pooler = not num_classes and model_config.representation_size is not None
  hf_config = VivitConfig(
      image_size=height, num_frames=frames, tubelet_size=list(model_config.tubelet),
      num_channels=3, hidden_size=model_config.hidden_size,
      num_hidden_layers=model_config.num_layers,
      num_attention_heads=model_config.num_heads,
      intermediate_size=model_config.mlp_dim, hidden_act='gelu_fast',
      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      layer_norm_eps=1e-6, qkv_bias=True,
      pooler_output_size=model_config.representation_size if has_pooler else None,
      id2label=dict(enumerate(labels)) if num_classes else None,
      architectures=['VivitForVideoClassification' if num_classes else 'VivitModel'])
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(params), sep='/')
  prefix = 'vivit.' if num_classes else ''
  tensors = {}
  for hub, ours, kind in hub_names(model_config.num_layers, bool(num_classes), has_pooler):
    name = hub if hub.startswith(('classifier.',)) else prefix + hub
    tensors[name] = np.ascontiguousarray(TO_HF[kind](np.asarray(flat[ours], np.float32)))
  os.makedirs(path, exist_ok=True)
  hf_config.save_pretrained(path)
  save_file(tensors, os.path.join(path, 'model.safetensors'), metadata={'format': 'pt'})
