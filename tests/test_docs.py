"""README.md and docs/*.md against the code: every `--flag` they show for a command
is one that command accepts (`--config.a.b` a field of the config shown), and every
relative link points to a file (and heading) that exists.

Each command's flags come from the command itself, run in this process up to the
point where it would parse its arguments: argparse's `parse_args` and absl's
`app.run` are stubbed to stop there, and absl's `DEFINE_*` to record the flag names
instead of registering them. Nothing is compiled; a few seconds in all."""
import argparse
import glob
import importlib.metadata
import os
import re
import runpy
import sys
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))

# A command as the docs write it: `vivit-NAME` or `python -m vivit.MODULE`.
COMMAND = re.compile(r'(?<![\w.-])(?:python -m (vivit(?:\.\w+)*)|(vivit-[a-z]+))(?![\w-])')
# Where a command's arguments end on its line: a shell operator, a quote, a comment.
END = re.compile(r'&&|\|\||[;|"\'`)]|\s#')
FLAG = re.compile(r'(?<![\w-])--([A-Za-z][\w-]*)((?:\.\w+)+)?')
PACKAGE = 'vivit-jax'  # the distribution's name, not a command


class _Parsed(BaseException):
  """Raised where a command would parse its arguments; carries what it accepts."""

  def __init__(self, flags, config_flag=None):
    super().__init__()
    self.flags, self.config_flag = flags, config_flag


def console_scripts():
  """{`vivit-NAME`: its entry point}, as setup.py declares them."""
  return {ep.name: ep for ep in importlib.metadata.entry_points(group='console_scripts')
          if ep.name.startswith('vivit-')}


def accepted_flags(command, monkeypatch):
  """(the option names `command` accepts, e.g. {'--video', ...}; the name of its
  config-file flag or None). `command`: `vivit-NAME` or a module for `python -m`."""
  from absl import app, flags
  from ml_collections import config_flags

  def stop_argparse(parser, *args, **kwargs):
    raise _Parsed(set(parser._option_string_actions))  # pylint: disable=protected-access

  defined, config = set(), []

  def recorder(kind):
    def define(name, *args, **kwargs):
      defined.add(f'--{name}')
      if kind in ('DEFINE_bool', 'DEFINE_boolean'):
        defined.add(f'--no{name}')
      if kind == 'DEFINE_config_file':
        config.append(f'--{name}')
    return define

  for kind in [k for k in dir(flags) if k.startswith('DEFINE')]:
    monkeypatch.setattr(flags, kind, recorder(kind))
  monkeypatch.setattr(config_flags, 'DEFINE_config_file', recorder('DEFINE_config_file'))
  monkeypatch.setattr(app, 'run', lambda *a, **k: (_ for _ in ()).throw(
      _Parsed(defined | {'--help'}, config[0] if config else None)))
  monkeypatch.setattr(argparse.ArgumentParser, 'parse_args', stop_argparse)
  monkeypatch.setattr(argparse.ArgumentParser, 'parse_known_args', stop_argparse)
  monkeypatch.setattr(sys, 'argv', [command])
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', RuntimeWarning)  # runpy: module already imported
      if command.startswith('vivit-'):
        console_scripts()[command].load()()
      else:
        runpy.run_module(command, run_name='__main__', alter_sys=False)
  except _Parsed as parsed:
    return parsed.flags, parsed.config_flag
  raise AssertionError(f'{command} ran without parsing its arguments')


def code_spans(text):
  """The text of every fenced code block's lines (backslash continuations joined) and
  of every inline code span."""
  spans = []
  fences = re.compile(r'^( *)```[^\n]*\n(.*?)^ *```', re.S | re.M)
  for block in fences.finditer(text):
    spans += block.group(2).replace('\\\n', ' ').splitlines()
  for inline in re.finditer(r'`([^`\n]+(?:\n[^`\n]+)*)`', fences.sub('', text)):
    spans.append(inline.group(1).replace('\n', ' '))
  return spans


def invocations(text):
  """[(command, its arguments as shown)] for every command in `text`'s code. A
  `vivit-launch ... -- ARGS` also yields ARGS for the command it launches."""
  found = []
  for span in code_spans(text):
    matches = list(COMMAND.finditer(span))
    for i, match in enumerate(matches):
      command = match.group(1) or match.group(2)
      if command == PACKAGE:
        continue
      stop = matches[i + 1].start() if i + 1 < len(matches) else len(span)
      arguments = span[match.end():stop]
      end = END.search(arguments)
      arguments = arguments[:end.start()] if end else arguments
      if command in ('vivit-launch', 'vivit.launch') and ' -- ' in f'{arguments} ':
        own, _, passed = f'{arguments} '.partition(' -- ')
        module = re.search(r'--module[ =](\S+)', own)
        found.append((command, own))
        found.append((module.group(1) if module else 'vivit.train', passed))
      else:
        found.append((command, arguments))
  return found


def placeholder(text):
  """A value the docs leave for the reader to fill in: `...`, `X`, `CONFIG`."""
  return '...' in text or re.search(r'\b[A-Z][A-Z_]*\b', text) is not None


def shown_config(arguments):
  """The ConfigDict of the `--config` the arguments show; the base config (which
  holds every field) where they show a placeholder or none."""
  from vivit import cli, recipes
  value = re.search(r'--config[ =]([^\s-][^\s]*)', arguments)
  if not value or placeholder(value.group(1)):
    return recipes.base_config()
  return recipes.load_config(cli.config_file(value.group(1)))


def has_field(config, path):
  for key in path:
    if not hasattr(config, 'keys') or key not in config.keys():
      return False
    config = config[key]
  return True


def problems(text, flags_of):
  """The flags in `text` that their command does not accept, as lines naming both.
  `flags_of(command)` gives `accepted_flags`' answer."""
  found = []
  for command, arguments in invocations(text):
    try:
      accepted, config_flag = flags_of(command)
    except (KeyError, ImportError):
      found.append(f'{command}: no such command')
      continue
    for flag in FLAG.finditer(arguments):
      name, dotted = f'--{flag.group(1)}', flag.group(2)
      if name not in accepted:
        found.append(f'{command} {name}: not a flag of {command}')
      elif dotted and name == config_flag and not placeholder(dotted):
        if not has_field(shown_config(arguments), dotted[1:].split('.')):
          found.append(f'{command} {name}{dotted}: no such config field')
      elif dotted:
        found.append(f'{command} {name}{dotted}: {name} has no fields')
  return found


@pytest.fixture(scope='module')
def flags_of():
  """`accepted_flags`, each command asked once."""
  cache = {}

  def ask(command):
    if command not in cache:
      if command.startswith('vivit-') and command not in console_scripts():
        raise KeyError(command)
      with pytest.MonkeyPatch.context() as monkeypatch:
        cache[command] = accepted_flags(command, monkeypatch)
    return cache[command]
  return ask


@pytest.mark.parametrize('page', PAGES, ids=os.path.basename)
def test_every_flag_shown_is_accepted_by_its_command(page, flags_of):
  with open(page, encoding='utf-8') as f:
    assert problems(f.read(), flags_of) == []


def test_the_pages_show_every_command():
  """The checks above reach each command: a page shows every one of them."""
  shown = {command for page in PAGES for command, _ in invocations(open(page).read())}
  expected = {'vivit.train', 'vivit.evaluate', 'vivit.predict', 'vivit.convert',
              'vivit.prepare', 'vivit.launch', 'vivit.demo_video', 'vivit-export'}
  assert expected <= shown


def test_a_flag_no_command_has_is_reported(flags_of):
  doc = """
```bash
python -m vivit.predict --checkpoint runs/demo --video a.mp4 --no-such-flag
vivit-launch --processes 2 --nproc 3 -- --config configs/synthetic_motion.py --workdirs d
python -m vivit.train --config configs/synthetic_motion.py --config.training.no_such_field=1
```
and inline: `vivit-convert --from scenic --source x`, `python -m vivit.no_such_command --x`.
"""
  assert problems(doc, flags_of) == [
      'vivit.predict --no-such-flag: not a flag of vivit.predict',
      'vivit-launch --nproc: not a flag of vivit-launch',
      'vivit.train --workdirs: not a flag of vivit.train',
      'vivit.train --config.training.no_such_field: no such config field',
      'vivit-convert --source: not a flag of vivit-convert',
      'vivit.no_such_command: no such command']


def test_flags_that_exist_are_not_reported(flags_of):
  doc = ('`python -m vivit.train --config configs/synthetic_motion.py:factorised_encoder '
         '--workdir d --config.training.batch_size=8 --distributed`, '
         '`vivit-evaluate --config ... --workdir d --checkpoint c --split test`, '
         '`vivit-predict --checkpoint c --video v --explain out --class NAME` and '
         '`python -m vivit.launch --processes 2 --module vivit.evaluate -- --split test`')
  assert problems(doc, flags_of) == []


def heading_anchors(path):
  """GitHub's anchors for the headings of a markdown file."""
  text = re.sub(r'^ *```.*?^ *```', '', open(path, encoding='utf-8').read(), flags=re.S | re.M)
  return {re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
          for heading in re.findall(r'^#+ (.*)$', text, re.M)}


def broken_links(page):
  text = open(page, encoding='utf-8').read()
  text = re.sub(r'^ *```.*?^ *```', '', text, flags=re.S | re.M)
  broken = []
  for target in re.findall(r'\]\(([^)\s]+)\)', text):
    if re.match(r'[a-z]+:', target):
      continue  # a URL
    path, _, anchor = target.partition('#')
    path = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
    if not os.path.exists(path):
      broken.append(f'{target}: no such file')
    elif anchor and path.endswith('.md') and anchor not in heading_anchors(path):
      broken.append(f'{target}: no such heading')
  return broken


@pytest.mark.parametrize('page', PAGES + sorted(glob.glob(
    os.path.join(ROOT, 'experiments', 'results', '*.md'))), ids=os.path.basename)
def test_relative_links_point_to_files_that_exist(page):
  assert broken_links(page) == []


def test_a_broken_link_is_reported(tmp_path):
  (tmp_path / 'other.md').write_text('# A heading\n')
  page = tmp_path / 'page.md'
  page.write_text('[ok](other.md#a-heading) [gone](missing.md) [bad](other.md#nope) '
                  '[web](https://example.com/x.md)\n')
  assert broken_links(str(page)) == ['missing.md: no such file', 'other.md#nope: no such heading']
