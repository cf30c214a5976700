"""Errors raised on purpose, each a mistake the user can fix: the commands print them
as one line (`vivit.cli`), while any other exception is a bug and keeps its traceback.
Each also derives from the built-in error of its kind (a bad config is a ValueError)."""


class UserError(Exception):
  """Base of every error raised on purpose."""


class ConfigError(UserError, ValueError):
  """A config field, override or command-line argument that no run can use."""


class DataError(UserError, ValueError):
  """A dataset or split that does not fit the config (labels, sizes, formats)."""


class MissingError(UserError, FileNotFoundError):
  """A file, directory or prepared dataset that is not there."""


class CheckpointError(UserError, ValueError):
  """A checkpoint that cannot be read or does not fit the model."""


class VideoError(UserError):
  """A video file that cannot be decoded (the message says why)."""


class AnnotationError(UserError, ValueError):
  """A line of an annotation file that cannot be used (the message names file and line)."""


class WorkdirBusy(UserError, RuntimeError):
  """Another training holds the workdir."""


class TrainingDiverged(UserError, RuntimeError):
  """A non-finite loss or parameters: training stopped."""


class OutputError(UserError, OSError):
  """An output file or directory that may not or cannot be written: an input, an
  existing file (without --overwrite), a directory that is missing or read-only, a
  full disk (the message names the file). Also any workdir write that fails."""


class CheckpointSaveError(OutputError):
  """A checkpoint could not be written (disk full, no permission)."""


def summary(error: BaseException) -> str:
  """Another library's error in a warning: 'TypeName: its message' on one line, at most
  300 characters of it."""
  text = ' '.join(str(error).split())[:300]
  return f'{type(error).__name__}: {text}' if text else type(error).__name__
