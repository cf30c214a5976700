"""The package's shape, read from its source: imports point down, each variant
name and config default has one home, and each block kind is handled in every
block-kind registry."""
import ast
import importlib
import os

import pytest

from vivit.errors import ConfigError
from vivit.models import variants
from vivit.recipes import base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Commands and what only commands use: nothing below may import them.
TOP = ('vivit.train', 'vivit.evaluate', 'vivit.predict', 'vivit.prepare', 'vivit.cli',
       'vivit.launch', 'vivit.demo_video', 'vivit.convert.__main__', 'vivit.benchmark',
       'vivit.export')


def python_files(*folders):
  for folder in folders:
    for directory, _, names in os.walk(os.path.join(ROOT, folder)):
      for name in sorted(names):
        if name.endswith('.py'):
          yield os.path.join(directory, name)


def module_name(path):
  name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
  return name[:-len('.__init__')] if name.endswith('.__init__') else name


def package_imports():
  """{module: {vivit modules it imports, anywhere in the file}}."""
  modules = {module_name(path): path for path in python_files('vivit')}
  graph = {}
  for name, path in modules.items():
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    imported = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1]
                          + ([base] if base else []))
        # `from vivit import cli` imports the module vivit.cli.
        targets = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base
                   for alias in node.names]
      else:
        continue
      for target in targets:
        while target and target not in modules:
          target = target.rpartition('.')[0]
        if target.startswith('vivit') and target != name:
          imported.add(target)
    graph[name] = imported
  return graph


def test_imports_have_no_cycle():
  graph = package_imports()
  # The package roots only hold what everything shares (`vivit.verbose`).
  graph = {name: {t for t in targets if t != 'vivit'} for name, targets in graph.items()}
  state = {}

  def visit(name, path):
    state[name] = 'open'
    for target in sorted(graph[name]):
      if state.get(target) == 'open':
        cycle = path[path.index(target):] + [target]
        pytest.fail('import cycle: ' + ' -> '.join(cycle))
      if target not in state:
        visit(target, path + [target])
    state[name] = 'done'
  for name in sorted(graph):
    if name not in state:
      visit(name, [name])


def test_only_commands_import_commands():
  """Libraries (models/, input/, datasets/, inference, timeline, explain, workdir, ...)
  never import a command module."""
  upward = [f'{name} imports {target}'
            for name, targets in package_imports().items() if name not in TOP
            for target in sorted(targets) if target in TOP]
  assert not upward, upward


# Every concern whose behaviour depends on the encoder block kind keeps one registry
# {block kind: entry}, read through `variants.for_block`: (module, registry name).
BLOCK_REGISTRIES = (
    ('vivit.models.encoder', 'BLOCKS'),  # the Flax module
    ('vivit.convert.vit', 'VIT_BLOCKS'),  # initialisation from a 2-D ViT
    ('vivit.convert.transformers', 'HF_BLOCKS'),  # HuggingFace tensor names
    ('vivit.relevance', 'RELEVANCE_LAYERS'),  # the attention layers explanations follow
)


@pytest.mark.parametrize('module, name', BLOCK_REGISTRIES)
def test_every_block_kind_is_in_each_block_registry(module, name):
  """A new block kind must be handled (or marked `Unsupported`) by every concern, and
  each registry is only read through `for_block`, which names an unhandled kind."""
  registry = getattr(importlib.import_module(module), name)
  assert sorted(registry) == sorted(variants.BLOCK_KINDS)
  source = open(importlib.import_module(module).__file__).read()
  assert f'for_block({name},' in source
  assert f'{name}[' not in source and f'{name}.get(' not in source


def test_variants_use_the_known_block_kinds():
  assert {v.block for v in variants.VARIANTS} == set(variants.BLOCK_KINDS)


def test_an_unhandled_block_kind_is_refused_by_name():
  from vivit.convert import transformers
  from vivit.models import encoder
  with pytest.raises(ConfigError, match="^the encoder is not supported for block kind 'ring'$"):
    variants.for_block(encoder.BLOCKS, 'ring', 'the encoder')
  with pytest.raises(ConfigError, match="^HuggingFace conversion is not supported for block "
                                        "kind 'factorised_self': transformers has no"):
    transformers.hub_names(2, False, False, variants.FACTORISED_SELF_ATTENTION_BLOCK)
  assert len(transformers.hub_names(2, False, False)) == len(
      transformers.hub_names(1, False, False)) + 16  # 16 tensors a joint block


def string_constants(path):
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
      yield node.lineno, node.value


def test_each_variant_name_is_stated_once():
  """Variant names, scenic's names and model-name suffixes live in the variant table;
  everything else reads it."""
  names = {text for row in variants.VARIANTS
           for text in (row.name, row.scenic_name, row.suffix) if text}
  table = os.path.join(ROOT, 'vivit', 'models', 'variants.py')
  found = [f'{os.path.relpath(path, ROOT)}:{line}: {text!r}'
           for path in python_files('vivit', 'configs', 'experiments') if path != table
           for line, text in string_constants(path) if text in names]
  assert not found, found


# Local names that hold a section of a run's config (or the whole config); scenic's
# configs are another project's, read with its defaults.
CONFIG_NAMES = ('config', 'dataset', 'training', 'model', 'mesh', 'init_from', 'eval')


def test_no_second_default_for_a_config_field():
  """`section.get('field'[, default])` would be a second default for a field that the
  base config already defines: sections are read as `section.field`."""
  fields = set()
  for section in base_config().values():
    if hasattr(section, 'keys'):
      fields.update(section.keys())
      fields.update(k for value in section.values() if hasattr(value, 'keys')
                    for k in value.keys())
  found = []
  for path in python_files('vivit', 'configs', 'experiments'):
    for node in ast.walk(ast.parse(open(path).read(), path)):
      if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == 'get' and node.args
              and isinstance(node.args[0], ast.Constant) and node.args[0].value in fields):
        continue
      receiver = node.func.value
      while isinstance(receiver, ast.Attribute) and receiver.attr in CONFIG_NAMES:
        receiver = receiver.value  # config.dataset.get(...): the receiver is `config...`
      name = receiver.attr if isinstance(receiver, ast.Attribute) else getattr(
          receiver, 'id', '')
      if (name in CONFIG_NAMES or name.endswith('_config')) and 'scenic' not in name:
        found.append(f'{os.path.relpath(path, ROOT)}:{node.lineno}: '
                     f'.get({node.args[0].value!r})')
  assert not found, found


def test_every_config_field_can_be_set_from_the_command_line():
  """A field a config leaves None must still have a type (a placeholder), or
  `--config.section.field=VALUE` is refused."""
  from ml_collections import config_dict
  from vivit.recipes import load_config

  def untyped(config, prefix=''):
    for name, value in config._fields.items():  # pylint: disable=protected-access
      if isinstance(value, config_dict.ConfigDict):
        yield from untyped(value, f'{prefix}{name}.')
      elif value is None:
        yield prefix + name
  paths = [os.path.join(directory, name)
           for directory, _, names in os.walk(os.path.join(ROOT, 'configs'))
           for name in names if name.endswith('.py')]
  found = {f'{os.path.relpath(path, ROOT)}{arg}: {field}'
           for path in paths for arg in ([''] + [f':{v}' for v in variants.NAMES]
                                         if path.endswith('synthetic_motion.py') else [''])
           for field in untyped(load_config(path + arg))}
  assert not found, sorted(found)
