"""The ViViT variants: the one table that models, configs, conversion, benchmarks and
tests read. Adding a variant is a row here; a new block kind (`BLOCK_KINDS`) is also an
entry in each block-kind registry, one per concern ({kind: entry}, read through
`for_block`; `tests/test_layout.py` lists them and checks that every kind is in each).

`config.model.variant` holds a `name`; model names (`vivit.models.configs`) end in
the `suffix` (`'B/16x2-FE'`); scenic's configs say `scenic_name`.
"""
import dataclasses
from typing import Mapping, Tuple, TypeVar, Union

from vivit.errors import ConfigError

# Encoder block kinds.
JOINT_BLOCK = 'joint'  # pre-LayerNorm ViT block over all tokens it is given
FACTORISED_SELF_ATTENTION_BLOCK = 'factorised_self'  # time attention, space attention, MLP
FACTORISED_HEADS_BLOCK = 'factorised_heads'  # half the heads over time, half over space
BLOCK_KINDS: Tuple[str, ...] = (JOINT_BLOCK, FACTORISED_SELF_ATTENTION_BLOCK,
                                FACTORISED_HEADS_BLOCK)


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  scenic_name: str  # scenic's `model.attention_config.type`
  paper_model: int  # the paper's numbering (Arnab et al., 2021, section 3.3)
  suffix: str  # of model names: '' (model 1), '-FE', '-FSA', '-FDP'
  has_cls: bool  # may classify with a CLS token ('token'); else pools ('gap')
  per_frame: bool  # a spatial encoder per frame, then a temporal one (model 2)
  block: str  # the encoder block kind


VARIANTS: Tuple[Variant, ...] = (
    Variant('spatio_temporal', 'spacetime', 1, '', True, False, JOINT_BLOCK),
    Variant('factorised_encoder', 'factorized_encoder', 2, '-FE', True, True, JOINT_BLOCK),
    Variant('factorised_self_attention', 'factorized_self_attention_block', 3, '-FSA',
            False, False, FACTORISED_SELF_ATTENTION_BLOCK),
    Variant('factorised_dot_product', 'factorized_dot_product_attention', 4, '-FDP',
            False, False, FACTORISED_HEADS_BLOCK),
)
NAMES: Tuple[str, ...] = tuple(v.name for v in VARIANTS)
SPATIO_TEMPORAL, FACTORISED_ENCODER, FACTORISED_SELF_ATTENTION, FACTORISED_DOT_PRODUCT = NAMES


@dataclasses.dataclass(frozen=True)
class Unsupported:
  """A block-kind registry's entry for a kind that its concern does not handle."""
  reason: str


T = TypeVar('T')


def for_block(registry: Mapping[str, Union[T, Unsupported]], kind: str, concern: str) -> T:
  """`registry[kind]`; ConfigError '<concern> is not supported for block kind <kind>'
  for a kind the registry lacks or marks `Unsupported`."""
  entry = registry.get(kind)
  if entry is None or isinstance(entry, Unsupported):
    why = f': {entry.reason}' if entry is not None else ''
    raise ConfigError(f'{concern} is not supported for block kind {kind!r}{why}')
  return entry


def _find(field: str, value: str) -> Variant:
  for variant in VARIANTS:
    if getattr(variant, field) == value:
      return variant
  options = ', '.join(repr(getattr(v, field)) for v in VARIANTS)
  raise ConfigError(f'unknown variant {value!r}; expected one of {options}')


def get(name: str) -> Variant:
  """The row of `config.model.variant`; ConfigError naming the known ones."""
  return _find('name', name)


def from_scenic(scenic_name: str) -> Variant:
  """The row of scenic's `attention_config.type`."""
  return _find('scenic_name', scenic_name)


def from_suffix(suffix: str) -> Variant:
  """The row of a model-name suffix ('' or '-FE', '-FSA', '-FDP')."""
  return _find('suffix', suffix)
