"""What a number a user gives may be. A `Range` (a whole or a finite number, between
two bounds) checks a value and says what it allows, in the one wording that the
commands' numeric arguments (`vivit.cli.argument_type`) and the config check
(`vivit.recipes.check_config`) share:

  error: argument --hop: 'nan' is not a finite number > 0 and <= 1e+06
  error: training.log_every=0 is not a whole number from 1 to 2147483647
"""
import math
import numbers
from typing import NamedTuple

from vivit.errors import ConfigError

# The largest whole number anything takes (TensorFlow and XLA count in int32).
MAX_WHOLE = 2 ** 31 - 1


class Range(NamedTuple):
  """Numbers from `low` to `high` (`above`/`below`: the bound itself excluded);
  `whole`: integers only (else any finite number); `optional`: None too (a config
  field's "the default")."""
  low: float = -math.inf
  high: float = math.inf
  whole: bool = False
  above: bool = False
  below: bool = False
  optional: bool = False

  def __str__(self) -> str:
    kind = 'a whole number' if self.whole else 'a finite number'
    text = lambda x: str(int(x)) if self.whole else f'{x:g}'
    low, high = math.isfinite(self.low), math.isfinite(self.high)
    if low and high and not (self.above or self.below):
      bounds = f' from {text(self.low)} to {text(self.high)}'
    else:
      parts = ([f'{">" if self.above else ">="} {text(self.low)}'] if low else []) + (
          [f'{"<" if self.below else "<="} {text(self.high)}'] if high else [])
      bounds = ' ' + ' and '.join(parts) if parts else ''
    return kind + bounds + (', or None' if self.optional else '')

  def admits(self, value) -> bool:
    if value is None:
      return self.optional
    if isinstance(value, bool) or not isinstance(
        value, numbers.Integral if self.whole else numbers.Real):
      return False
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):
      return False
    return ((self.low < value if self.above else self.low <= value)
            and (value < self.high if self.below else value <= self.high))

  def check(self, name: str, value) -> None:
    """ConfigError naming `name` and what it allows unless `value` is allowed."""
    if not self.admits(value):
      raise ConfigError(f'{name}={value!r} is not {self}')


def whole(low: int = 1, high: int = MAX_WHOLE, **options) -> Range:
  """A `Range` of whole numbers, by default the positive ones."""
  return Range(low, high, whole=True, **options)


def finite(low: float = -math.inf, high: float = math.inf, **options) -> Range:
  """A `Range` of finite numbers."""
  return Range(low, high, **options)
