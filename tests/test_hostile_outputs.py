"""Outputs never cost a user a file (`vivit.outputs`): `vivit-predict --timeline/--explain
OUT` never writes over its input video, replaces existing OUT.* only with
`--overwrite`, checks the paths before anything is read and writes all files or none
(a full disk leaves no partial PNG); `vivit-convert --dst` refuses a directory that
holds files (a training workdir) and fills a new one whole or not at all."""
import errno
import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import video_files as vf
from helpers import run_env
from vivit import outputs, predict
from vivit.convert.__main__ import main as convert_main
from vivit.errors import OutputError


def digest(path):
  with open(path, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture(scope='module')
def video(tmp_path_factory):
  """1.2 s of noise at 10 fps, 20x24: three windows of the tiny model's clip."""
  rng = np.random.RandomState(0)
  frames = (rng.randint(0, 256, (20, 24, 3), np.uint8) for _ in range(12))
  return vf.write_frames(str(tmp_path_factory.mktemp('noise') / 'noise.mp4'), frames,
                         fps=10)


def one_line_error(capsys, pattern):
  error = capsys.readouterr().err
  assert error.startswith('error: ') and error.count('\n') == 1, error
  assert re.search(pattern, error), error
  return error


def test_the_commands_refuse_to_write_over_a_file(two_head_checkpoint, tmp_path):
  """Through the real commands: `--video cat.gif --explain cat` leaves the GIF as it
  was, and `vivit-convert --dst` a training workdir leaves its files."""
  frames = [Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)) for i in range(4)]
  frames[0].save(tmp_path / 'cat.gif', save_all=True, append_images=frames[1:])
  before = digest(tmp_path / 'cat.gif')
  workdir = tmp_path / 'run'
  (workdir / 'params').mkdir(parents=True)
  (workdir / 'params' / 'kept').write_text('params')
  (workdir / 'model_config.json').write_text('{}')
  commands = [
      [sys.executable, '-m', 'vivit.predict', '--checkpoint', two_head_checkpoint,
       '--video', 'cat.gif', '--explain', 'cat', '--overwrite'],
      [sys.executable, '-m', 'vivit.convert', '--from', 'transformers', '--src', 'hf',
       '--dst', 'run']]
  processes = [subprocess.Popen(command, cwd=tmp_path, env=run_env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for command in commands]
  results = [process.communicate(timeout=300) + (process.returncode,)
             for process in processes]
  expected = [r'^error: --explain cat: it would write cat\.gif over the input --video '
              r'cat\.gif; choose another name$',
              r'^error: --dst run: the directory holds files \(model_config\.json, '
              r'params\), which would be replaced; give a new or empty directory$']
  for (out, err, status), pattern in zip(results, expected):
    assert status == 2 and not out and re.fullmatch(pattern, err.strip()), err[-2000:]
  assert digest(tmp_path / 'cat.gif') == before
  assert (workdir / 'params' / 'kept').read_text() == 'params'
  assert (workdir / 'model_config.json').read_text() == '{}'
  assert sorted(os.listdir(tmp_path)) == ['cat.gif', 'run']


@pytest.mark.parametrize('case, args, pattern', [
    ('missing directory', ['--timeline', 'missing/out'],
     r'--timeline .*/missing/out: directory .*/missing does not exist$'),
    ('a directory named like a file', ['--explain', 'dir'],
     r'--explain .*/dir: .*/dir\.png is a directory; choose another name$'),
    ('read-only directory', ['--timeline', 'read_only/out'],
     r'--timeline .*/read_only/out: directory .*/read_only is not writable$'),
    ('existing files', ['--timeline', 'out'],
     r'--timeline .*/out: .*/out\.csv, .*/out\.png exist; add --overwrite to replace '
     r'them, or choose another name$'),
    ('a link to the input', ['--explain', 'link', '--overwrite'],
     r'--explain .*/link: it would write .*/link\.gif over the input --video '),
    ('--overwrite alone', ['--overwrite'], r'--overwrite: only with --timeline or --explain$'),
])
def test_output_paths_are_checked_before_anything_is_read(tmp_path, capsys, monkeypatch,
                                                          case, args, pattern):
  """Neither the checkpoint nor the video exists: the outputs are checked first."""
  (tmp_path / 'dir.png').mkdir()
  for name in ('out.csv', 'out.png'):
    (tmp_path / name).write_text('mine')
  (tmp_path / 'read_only').mkdir()
  os.symlink(tmp_path / 'clip.gif', tmp_path / 'link.gif')
  access = os.access  # root may write anywhere: a read-only directory as os.access sees it
  monkeypatch.setattr(os, 'access', lambda path, mode: access(path, mode) and not
                      str(path).endswith('read_only'))
  args = [str(tmp_path / a) if a in ('missing/out', 'dir', 'out', 'read_only/out', 'link')
          else a for a in args]
  assert predict.main(['--checkpoint', str(tmp_path / 'none'), '--video',
                       str(tmp_path / 'clip.gif')] + args) == 2
  one_line_error(capsys, pattern)
  assert (tmp_path / 'out.csv').read_text() == (tmp_path / 'out.png').read_text() == 'mine'
  assert sorted(os.listdir(tmp_path)) == ['dir.png', 'link.gif', 'out.csv', 'out.png',
                                          'read_only']


def test_existing_outputs_are_replaced_with_overwrite(two_head_checkpoint, video, tmp_path,
                                                      capsys):
  out = str(tmp_path / 'noise')
  (tmp_path / 'noise.json').write_text('mine')
  argv = ['--checkpoint', two_head_checkpoint, '--video', video, '--timeline', out]
  assert predict.main(argv) == 2
  one_line_error(capsys, rf'{re.escape(out)}\.json exists; add --overwrite to replace it')
  assert os.listdir(tmp_path) == ['noise.json']
  assert predict.main(argv + ['--overwrite']) == 0
  assert capsys.readouterr().out.split() == [out + '.csv', out + '.json', out + '.png']
  assert (tmp_path / 'noise.json').read_text().startswith('{')
  assert sorted(os.listdir(tmp_path)) == ['noise.csv', 'noise.json', 'noise.png']


def test_a_full_disk_leaves_no_partial_file(two_head_checkpoint, video, tmp_path, capsys,
                                            monkeypatch):
  """The PNG's write fails half-way (ENOSPC): one line naming it, no 0-byte PNG, no
  temporary file, and the CSV written before it is not put in place either."""
  from matplotlib.figure import Figure

  def savefig(self, path, **kwargs):
    open(path, 'wb').close()
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  monkeypatch.setattr(Figure, 'savefig', savefig)
  out = str(tmp_path / 'noise')
  (tmp_path / 'noise.csv').write_text('mine')
  assert predict.main(['--checkpoint', two_head_checkpoint, '--video', video,
                       '--timeline', out, '--overwrite']) == 2
  one_line_error(capsys, rf'^error: {re.escape(out)}\.png cannot be written: No space '
                         rf'left on device$')
  assert os.listdir(tmp_path) == ['noise.csv']
  assert (tmp_path / 'noise.csv').read_text() == 'mine'


@pytest.mark.parametrize('make, pattern', [
    (lambda dst: dst.write_text('x'), r'--dst .*/dst: a file, not a directory'),
    (lambda dst: (dst / 'params').mkdir(parents=True),
     r'--dst .*/dst: the directory holds files \(params\), which would be replaced'),
])
def test_convert_refuses_a_dst_that_is_not_new(tmp_path, capsys, make, pattern):
  make(tmp_path / 'dst')
  assert convert_main(['--from', 'transformers', '--src', str(tmp_path / 'none'),
                       '--dst', str(tmp_path / 'dst')]) == 2
  one_line_error(capsys, pattern)


def test_a_new_directory_is_whole_or_absent(tmp_path):
  """Filled beside, renamed into place (onto an empty directory too), removed when
  filling it fails."""
  empty = tmp_path / 'empty'
  empty.mkdir()
  for dst in (empty, tmp_path / 'new' / 'dst'):
    outputs.check_new_directory('--dst', str(dst))
    with outputs.new_directory('--dst', str(dst)) as partial:
      assert os.path.dirname(partial) == str(dst.parent)
      with open(os.path.join(partial, 'params'), 'w') as f:
        f.write('written')
    assert (dst / 'params').read_text() == 'written'
    assert os.stat(dst).st_mode & 0o777 == 0o777 & ~current_umask()
  with pytest.raises(OutputError, match=r'^--dst .*/failed: cannot be written: No space '
                                        r'left on device$'):
    with outputs.new_directory('--dst', str(tmp_path / 'failed')) as partial:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert sorted(os.listdir(tmp_path)) == ['empty', 'new']


def current_umask():
  umask = os.umask(0)
  os.umask(umask)
  return umask
