"""What an install gets: every third-party module vivit/ imports is declared in
setup.py (the base install, or an extra whose modules are imported inside functions
only), and the shipped configs run by name from a non-editable install."""
import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig

import pytest
from packaging.requirements import Requirement  # pytest requires packaging

from helpers import read_metrics, run_env, tiny_overrides
from vivit import cli
from vivit.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def distribution(requirement: str) -> str:
  """The normalised distribution name of a requirement (`etils[epath]>=1; ...`)."""
  name = re.match(r'[A-Za-z0-9][A-Za-z0-9._-]*', requirement).group()
  return re.sub(r'[-_.]+', '-', name).lower()


def setup_definitions():
  """setup.py's module-level constants (INSTALL_REQUIRES, TENSORFLOW, ...) and
  `tensorflow_requirement`, read without running `setup()`."""
  tree = ast.parse(open(os.path.join(ROOT, 'setup.py')).read())
  kept = [node for node in tree.body if isinstance(node, (ast.Import, ast.FunctionDef))
          or isinstance(node, ast.Assign) and all(
              isinstance(t, ast.Name) and t.id.isupper() for t in node.targets)]
  namespace = {}
  exec(compile(ast.Module(body=kept, type_ignores=[]), 'setup.py', 'exec'), namespace)
  return namespace


def setup_requirements():
  """(install_requires, {extra: requirements}) of setup.py as it would give them here,
  read without running it."""
  tree = ast.parse(open(os.path.join(ROOT, 'setup.py')).read())
  call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
              and getattr(node.func, 'id', None) == 'setup')
  keywords = {k.arg: k.value for k in call.keywords}
  definitions = setup_definitions()
  return (definitions['INSTALL_REQUIRES'] + [definitions['tensorflow_requirement']()],
          ast.literal_eval(keywords['extras_require']))


def floor(requirement: str) -> str:
  """The version of the `>=` of a requirement."""
  specifier = Requirement(requirement).specifier
  (version,) = [s.version for s in specifier if s.operator == '>=']
  return version


def pins(name):
  """{distribution: version} of a constraints file."""
  found = {}
  for line in open(os.path.join(ROOT, name)):
    if line.strip() and not line.startswith('#'):
      distribution_name, _, version = line.strip().partition('==')
      found[distribution(distribution_name)] = version
  return found


def third_party_imports():
  """{(top-level module, imported inside a function): [files]} of vivit/, less the
  standard library and vivit itself."""
  found = {}

  def visit(node, path, in_function):
    for child in ast.iter_child_nodes(node):
      names = []
      if isinstance(child, ast.Import):
        names = [alias.name for alias in child.names]
      elif isinstance(child, ast.ImportFrom) and not child.level:
        names = [child.module]
      for name in names:
        module = name.partition('.')[0]
        if module not in sys.stdlib_module_names and module != 'vivit':
          found.setdefault((module, in_function), []).append(os.path.relpath(path, ROOT))
      visit(child, path, in_function or isinstance(
          child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

  for directory, _, files in os.walk(os.path.join(ROOT, 'vivit')):
    for name in files:
      if name.endswith('.py'):
        path = os.path.join(directory, name)
        visit(ast.parse(open(path).read(), path), path, False)
  return found


def test_every_imported_package_is_declared():
  """The rule: a module of `cli.EXTRAS` comes with its extra and is imported inside
  functions only (`cli.run` names the extra when it is missing); every other
  third-party module comes with the base install."""
  install_requires, extras = setup_requirements()
  base = {distribution(r) for r in install_requires}
  by_module = {module: {re.sub(r'[-_.]+', '-', d).lower() for d in names}
               for module, names in importlib.metadata.packages_distributions().items()}
  problems = []
  for (module, in_function), files in sorted(third_party_imports().items()):
    where = f'{module} (imported in {", ".join(sorted(set(files)))})'
    if module in cli.EXTRAS:
      extra = cli.EXTRAS[module]
      # Its distribution is known where the extra is installed (CI installs them all).
      if module in by_module and not by_module[module] & {
          distribution(r) for r in extras.get(extra, [])}:
        problems.append(f'{where}: not in the {extra!r} extra of setup.py')
      if not in_function:
        problems.append(f'{where}: an extra\'s module imported at module level')
    elif module not in by_module:
      problems.append(f'{where}: not installed here, so its distribution is unknown')
    elif not by_module[module] & base:
      problems.append(f'{where}: {"/".join(sorted(by_module[module]))} is not in '
                      f'install_requires (nor is {module} in cli.EXTRAS)')
  assert not problems, '\n'.join(problems)


def test_a_missing_extra_names_it_and_another_missing_module_is_a_bug():
  torch = ModuleNotFoundError("No module named 'torch'", name='torch')
  assert '".[hf]"' in cli.missing_extra(torch)
  beam = ModuleNotFoundError(name='apache_beam.options')
  assert '"vivit-jax[beam]"' in cli.missing_extra(beam)
  assert cli.missing_extra(ModuleNotFoundError(name='numpy')) is None


@pytest.mark.parametrize('value,file,arg', [
    ('synthetic_motion', 'synthetic_motion.py', ''),
    ('synthetic_motion:factorised_encoder', 'synthetic_motion.py', ':factorised_encoder'),
    ('kinetics400/vivit_b_16x2', os.path.join('kinetics400', 'vivit_b_16x2.py'), ''),
])
def test_a_shipped_config_is_found_by_name(value, file, arg):
  assert cli.config_file(value) == os.path.join(ROOT, 'configs', file) + arg
  assert cli.with_config_files(['train', '--config', value, '--config.seed=1']) == [
      'train', '--config', cli.config_file(value), '--config.seed=1']
  assert cli.with_config_files([f'--config={value}']) == [f'--config={cli.config_file(value)}']


def test_a_path_wins_and_an_unknown_name_lists_the_shipped_ones(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  os.makedirs('synthetic_motion')  # a path that exists, named like a shipped config
  assert cli.config_file('synthetic_motion:x') == 'synthetic_motion:x'
  with pytest.raises(ConfigError, match=r'no such file.*shipped: .*kinetics400/vivit_b_16x2'):
    cli.config_file('kinetics400/vivit_b_16x3')
  shipped = {os.path.relpath(os.path.join(d, f), os.path.join(ROOT, 'configs'))[:-3]
             for d, _, files in os.walk(os.path.join(ROOT, 'configs'))
             for f in files if f.endswith('.py')}
  assert set(cli.config_names()) == {name.replace(os.sep, '/') for name in shipped}


@pytest.mark.slow  # ~50 s: the install compiles the CPU kernel, the run compiles its steps
def test_a_wheel_install_trains_on_a_config_named_from_any_directory(tmp_path):
  """Not editable, no clone in reach: `--config synthetic_motion` finds the config
  the package ships (vivit/configs) and trains."""
  source = tmp_path / 'source'
  for name in ('setup.py', 'pyproject.toml'):
    os.makedirs(source, exist_ok=True)
    shutil.copy(os.path.join(ROOT, name), source)
  for name in ('vivit', 'configs'):
    shutil.copytree(os.path.join(ROOT, name), source / name,
                    ignore=shutil.ignore_patterns('__pycache__', '*.so'))
  target = tmp_path / 'site'
  subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-deps',
                  '--no-build-isolation', '--no-index', '--target', str(target),
                  str(source)], check=True, capture_output=True, cwd=tmp_path)
  assert os.path.isfile(target / 'vivit' / 'configs' / 'synthetic_motion.py')
  shutil.rmtree(source)  # nothing of a clone left to find
  workdir = tmp_path / 'run'
  overrides = tiny_overrides(str(tmp_path / 'tfds'), **{'training.num_steps': 2,
                                                        'training.eval_every': 2})
  env = dict(run_env(), PYTHONPATH=str(target))
  imported = subprocess.run([sys.executable, '-c', 'import vivit; print(vivit.__file__)'],
                            env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
  assert imported.stdout.startswith(str(target)), imported.stdout
  result = subprocess.run(
      [sys.executable, '-m', 'vivit.train', '--config', 'synthetic_motion',
       f'--workdir={workdir}'] + [f'--config.{k}={v}' for k, v in overrides.items()],
      env=env, cwd=tmp_path, capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]
  assert [r['step'] for r in read_metrics(workdir)] == [1, 2]


def test_constraints_pin_each_declared_requirement_within_its_bounds():
  """constraints.txt (what CI installs with) pins every requirement of the base
  install and the test extra, at a version setup.py allows."""
  install_requires, extras = setup_requirements()
  pinned = pins('constraints.txt')
  problems = []
  for text in install_requires + extras['test']:
    requirement = Requirement(text)
    if requirement.marker is not None and not requirement.marker.evaluate():
      continue
    version = pinned.get(distribution(text))
    if version is None or not requirement.specifier.contains(version, prereleases=True):
      problems.append(f'{text}: constraints.txt has {version}')
  assert not problems, '\n'.join(problems)


def test_constraints_min_pin_exactly_the_floors():
  """constraints-min.txt pins each floor of the base install and the hf extra (torch
  aside: the test extra's CPU build), and nothing else; TensorFlow's two candidates
  share one floor; the test extra asks for no more than the hf extra's floors."""
  definitions = setup_definitions()
  _, extras = setup_requirements()
  hf = [text for text in extras['hf'] if distribution(text) != 'torch']
  declared = definitions['INSTALL_REQUIRES'] + [definitions['TENSORFLOW_CPU']] + hf
  floors = {distribution(text): floor(text) for text in declared}
  assert pins('constraints-min.txt') == floors
  assert floor(definitions['TENSORFLOW']) == floor(definitions['TENSORFLOW_CPU'])
  test_extra = {distribution(text): text for text in extras['test']}
  assert [test_extra[distribution(text)] for text in hf] == hf


@pytest.mark.parametrize('installed,machine,system,expected', [
    ((), 'x86_64', 'linux', 'TENSORFLOW_CPU'),
    ((), 'AMD64', 'win32', 'TENSORFLOW_CPU'),
    (('tensorflow',), 'x86_64', 'linux', 'TENSORFLOW'),
    (('tensorflow-cpu',), 'x86_64', 'linux', 'TENSORFLOW_CPU'),
    ((), 'aarch64', 'linux', 'TENSORFLOW'),
    ((), 'arm64', 'darwin', 'TENSORFLOW'),
])
def test_a_full_tensorflow_is_kept_and_tensorflow_cpu_taken_where_it_has_wheels(
    monkeypatch, installed, machine, system, expected):
  definitions = setup_definitions()
  site_packages = sysconfig.get_paths()['purelib']

  def distributions(name, path):
    return [name] if name in installed and site_packages in path else []

  monkeypatch.setattr(importlib.metadata, 'distributions', distributions)
  # As under pip's build isolation: the environment's site-packages not on sys.path.
  monkeypatch.setattr(definitions['sys'], 'path', ['/build-env/overlay'])
  monkeypatch.setattr(definitions['platform'], 'machine', lambda: machine)
  monkeypatch.setattr(definitions['sys'], 'platform', system)
  assert definitions['tensorflow_requirement']() == definitions[expected]


def test_ci_runs_the_readme_test_command():
  readme = open(os.path.join(ROOT, 'README.md')).read()
  block = readme.split('**2. Run the tests**', 1)[1].split('```bash\n', 1)[1].split('\n```')[0]
  ci = open(os.path.join(ROOT, '.ci', 'run')).read().strip().splitlines()[-1]
  assert block.strip() == ci == 'pip install -c constraints.txt -e ".[test]" && python -m pytest -q'


# The floors' check: the hf extra and the test extra's tools, not the whole test extra
# (apache-beam, wandb and mlflow have floors of their own far above the base floors; the
# tests of those extras skip without them).
FLOOR_TOOLS = ('pytest', 'pytest-xdist', 'hypothesis', 'psutil', 'torch')
FLOOR_TESTS = ('tests/test_models.py', 'tests/test_convert.py', 'tests/test_train.py',
               'tests/test_pipeline.py', 'tests/test_step.py', 'tests/test_export.py')


@pytest.mark.slow  # ~6 min: a venv of the floors (~2 GB), then a part of the suite in it
def test_the_suite_passes_at_the_floors(tmp_path):
  """`pip install -c constraints-min.txt` gives exactly the floors, and the models,
  the conversion against transformers, training and resuming, the input pipeline and
  the serving exports (jax2tf, jax.export) pass with them."""
  _, extras = setup_requirements()
  tools = [text for text in extras['test'] if distribution(text) in FLOOR_TOOLS]
  source = tmp_path / 'source'  # a copy: the build writes beside the sources
  os.makedirs(source)
  for name in ('setup.py', 'pyproject.toml'):
    shutil.copy(os.path.join(ROOT, name), source)
  for name in ('vivit', 'configs'):
    shutil.copytree(os.path.join(ROOT, name), source / name,
                    ignore=shutil.ignore_patterns('__pycache__', '*.so'))
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
  python = str(venv / 'bin' / 'python')
  install = subprocess.run(
      [python, '-m', 'pip', 'install', '--quiet', '--disable-pip-version-check', '-c',
       os.path.join(ROOT, 'constraints-min.txt'), f'{source}[hf]'] + tools,
      capture_output=True, text=True)
  assert install.returncode == 0, install.stderr[-3000:]
  versions = subprocess.run(
      [python, '-c', 'import importlib.metadata as m, json, sys; print(json.dumps('
       '{d: m.version(d) for d in sys.argv[1:]}))', *pins('constraints-min.txt')],
      capture_output=True, text=True, check=True)
  assert json.loads(versions.stdout) == pins('constraints-min.txt')
  # The checkout's vivit (pytest.ini's pythonpath) with the floors' libraries.
  result = subprocess.run(
      [python, '-m', 'pytest', '-q', '-n', '2', '-p', 'no:cacheprovider', *FLOOR_TESTS],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
  assert result.returncode == 0, result.stdout[-5000:]
