"""Hostile annotation files: a BOM or a capitalised header is read as the header it
is; a label with a newline (or any control character), a file in latin-1, a field
over 128 KiB, an empty file, a short row, a clip listed twice with other labels are
each one line naming the file and line, before any video is decoded.

Most cases run `vivit-prepare` in-process and stop it where decoding would begin
(`read_only`); one runs it in full (label.labels.txt, the examples' labels), one as
a subprocess (exit status 2, one line on stderr)."""
import csv
import io
import json
import os
import re
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds

import video_files as vf
from helpers import run_env
from vivit import prepare
from vivit.datasets.builder import VideoDatasetBuilder

KINETICS_HEADER = ['label', 'youtube_id', 'time_start', 'time_end', 'split']
SSV2 = 'something-something-v2-'


def write(path, rows, header=None, encoding='utf-8'):
  """A CSV of `rows` (under `header`) in `encoding` ('utf-8-sig': with a BOM)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  text = io.StringIO(newline='')
  csv.writer(text).writerows(([header] if header else []) + rows)
  with open(path, 'wb') as f:
    f.write(text.getvalue().encode(encoding))
  return path


def write_bytes(path, data: bytes):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(data)
  return path


def kinetics_rows(labels):
  return [[label, f'yt{i:09d}', 0, 10, 'train'] for i, label in enumerate(labels)]


class Stopped(Exception):
  """Raised where `prepare` would start decoding."""


@pytest.fixture
def read_only(monkeypatch):
  """`vivit-prepare DATASET --annotations A` run in-process up to the decoding:
  returns the builder (what it read), or the `error:` line on stderr with status 2."""
  def stop(builder, **kwargs):
    raise Stopped(builder)
  monkeypatch.setattr(VideoDatasetBuilder, 'download_and_prepare', stop)

  def run(capsys, root, dataset, annotations, videos=None):
    videos = videos or os.path.join(root, 'videos')
    os.makedirs(videos, exist_ok=True)
    args = [dataset, '--videos', videos, '--data_dir', os.path.join(root, 'tfds')]
    args += ['--annotations', annotations] if annotations else []
    try:
      status = prepare.main(args)
    except Stopped as stopped:
      return stopped.args[0]
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith('error: '), err
    assert 'Traceback' not in err
    return lines[0]
  return run


def names(builder, feature='label'):
  return builder.info.features[feature].names


# --- a BOM and capitalised headers ---------------------------------------------------


def bom_release(dataset, root):
  """`dataset`'s annotation files, every one with a UTF-8 BOM and capitalised header
  names: (annotations, {feature: class names it must give})."""
  annotations = os.path.join(root, 'annotations')
  path = lambda name: os.path.join(annotations, name)
  bom = dict(encoding='utf-8-sig')
  if dataset == 'kinetics400':
    write(path('train.csv'), kinetics_rows(['b', 'a', 'a']),
          ['Label', 'YouTube_ID', 'Time_Start', 'Time_End', 'Split'], **bom)
    return annotations, {'label': ['a', 'b']}
  if dataset == 'epic_kitchens_100':
    for kind, keys in (('verb', ['take', 'put']), ('noun', ['cup', 'tap'])):
      write(path(f'EPIC_100_{kind}_classes.csv'), [[i, k] for i, k in enumerate(keys)],
            ['ID', 'Key'], **bom)
    write(path('EPIC_100_train.csv'),
          [['P01_01_0', 'P01_01', '00:00:00.00', '00:00:01.00', 1, 60, 1, 0]],
          ['Narration_ID', 'Video_ID', 'Start_Timestamp', 'Stop_Timestamp',
           'Start_Frame', 'Stop_Frame', 'Verb_Class', 'Noun_Class'], **bom)
    return annotations, {'verb': ['take', 'put'], 'noun': ['cup', 'tap']}
  if dataset == 'moments_in_time':
    write(path('moments_categories.txt'), [['running', 0], ['blocking', 1]], **bom)
    write(path('trainingSet.csv'), [['blocking/x.mp4', 'blocking', 3, 0]], **bom)
    return annotations, {'label': ['running', 'blocking']}
  if dataset == 'ssv2':
    for name, value in (('labels', {'Holding something': '0'}),
                        ('train', [{'id': '1', 'template': 'Holding [something]'}]),
                        ('validation', [])):
      write_bytes(path(f'{SSV2}{name}.json'), json.dumps(value).encode('utf-8-sig'))
    return annotations, {'label': ['Holding something']}
  listing = write(os.path.join(root, 'list.csv'), [['a.mp4', 'run'], ['b.mp4', 'jump']],
                  ['Path', 'LABEL'], **bom)
  return listing, {'label': ['jump', 'run']}


@pytest.mark.parametrize('dataset', ['kinetics400', 'epic_kitchens_100', 'moments_in_time',
                                     'ssv2', 'video_folder'])
def test_a_bom_and_capitalised_headers_are_read_as_the_release_files(
    dataset, tmp_path, read_only, capsys):
  annotations, classes = bom_release(dataset, str(tmp_path))
  builder = read_only(capsys, str(tmp_path), dataset, annotations)
  assert isinstance(builder, VideoDatasetBuilder), builder
  for feature, expected in classes.items():
    assert names(builder, feature) == expected
  assert len(builder.entries()) == {'kinetics400': 3, 'video_folder': 2}.get(dataset, 1)


def test_a_bom_header_prepares_the_same_classes_and_labels(tmp_path):
  """In full: label.labels.txt holds the training labels, one per line, and each
  example its own class."""
  annotations = str(tmp_path / 'annotations')
  write(os.path.join(annotations, 'train.csv'), kinetics_rows(['b', 'a']),
        ['Label', 'YouTube_ID', 'Time_Start', 'Time_End', 'Split'], encoding='utf-8-sig')
  videos = str(tmp_path / 'videos')
  for i in range(2):
    vf.write_video(os.path.join(videos, f'yt{i:09d}_000000_000010.mp4'), 4, 25, (16, 16))
  report = vf.run_prepare('kinetics400', videos, annotations, tmp_path / 'tfds')
  assert report['examples'] == {'train': 2} and not report['skipped']
  builder = tfds.builder('kinetics400', data_dir=str(tmp_path / 'tfds'))
  with open(os.path.join(builder.data_dir, 'label.labels.txt')) as f:
    assert f.read() == 'a\nb\n'
  labels = {e['id'].decode(): e['label'] for e in builder.as_data_source('train')}
  assert labels == {'yt000000000_000000_000010': 1, 'yt000000001_000000_000010': 0}


def test_a_clip_listed_twice_identically_is_prepared_once(tmp_path, read_only, capsys):
  annotations = str(tmp_path / 'annotations')
  rows = kinetics_rows(['a', 'b'])
  write(os.path.join(annotations, 'train.csv'), rows + rows[:1], KINETICS_HEADER)
  builder = read_only(capsys, str(tmp_path), 'kinetics400', annotations)
  assert [e.key for e in builder.entries()] == ['yt000000000_000000_000010',
                                                'yt000000001_000000_000010']
  assert 'left out 1 repeated listings of clips (identical to the first)' in (
      capsys.readouterr().err)


# --- one line naming the file and line ------------------------------------------------


def kinetics_case(root, case):
  """Kinetics annotations with one hostile `case` at train.csv line 3 (or the file)."""
  annotations = os.path.join(root, 'annotations')
  train = os.path.join(annotations, 'train.csv')
  labels = {'newline': 'tying\nbow tie', 'tab': 'tying\tbow', 'c1': 'tying\x85bow',
            'delete': 'tying\x7fbow', 'line_separator': 'tying\u2028bow', 'empty': '',
            'spaces': '   ', 'bom_inside': '\ufefftying'}
  if case in labels:
    write(train, kinetics_rows(['a', labels[case], 'b']), KINETICS_HEADER)
  elif case == 'latin1':
    write(train, kinetics_rows(['a', 'café', 'b']), KINETICS_HEADER, encoding='latin-1')
  elif case == 'huge_field':
    write(train, kinetics_rows(['a', 'x' * (128 << 10 | 1), 'b']), KINETICS_HEADER)
  elif case == 'unclosed_quote':
    text = '\n'.join(['label,youtube_id,time_start,time_end,split', 'a,y0,0,10,train',
                      '"b,y1,0,10,train'] + [f'a,y{i},0,10,train' for i in range(20000)])
    write_bytes(train, text.encode())
  elif case == 'unquoted_comma':
    write_bytes(train, b'label,youtube_id,time_start,time_end,split\na,y0,0,10,train\n'
                b'passing American football (in game), x,y1,0,10,train\n')
  elif case == 'short_row':
    write_bytes(train, b'label,youtube_id,time_start,time_end,split\na,y0,0,10,train\n'
                b'b,y1,0\n')
  elif case == 'infinite_time':
    write(train, [['a', 'y0', 0, 10, 'train'], ['b', 'y1', 'inf', 'inf', 'train']],
          KINETICS_HEADER)
  elif case == 'differs':
    write(train, [['a', 'y0', 0, 10, 'train'], ['b', 'y0', 0, 10, 'train']],
          KINETICS_HEADER)
  elif case == 'empty_file':
    write_bytes(train, b'')
  elif case == 'header_only':
    write_bytes(train, b'\xef\xbb\xbflabel,youtube_id,time_start,time_end,split\r\n')
  elif case == 'header_twice':
    write(train, kinetics_rows(['a']), KINETICS_HEADER + ['LABEL'])
  elif case == 'a_file':
    return write(train, kinetics_rows(['a']), KINETICS_HEADER)
  return annotations


KINETICS_CASES = {
    'newline': r"train.csv:3: label 'tying\\nbow tie' contains the control character "
               r'U\+000A; it must be one line of printable text',
    'tab': r'train.csv:3: label .* U\+0009',
    'c1': r'train.csv:3: label .* U\+0085',
    'delete': r'train.csv:3: label .* U\+007F',
    'line_separator': r'train.csv:3: label .* U\+2028',
    'bom_inside': r'train.csv:3: label .* U\+FEFF',
    'empty': r'train.csv:3: empty label',
    'spaces': r'train.csv:3: empty label',
    'latin1': r'train.csv:3: not UTF-8 text \(byte 0xe9 at column 4\); annotation files '
              r'are read as UTF-8: convert it, e.g. iconv -f latin1 -t utf-8',
    'huge_field': r'train.csv:3: a field longer than 131072 characters \(an unclosed '
                  r'quote\?\)',
    'unclosed_quote': r'train.csv:3: a field longer than 131072 characters',
    'unquoted_comma': r'train.csv:3: 6 fields where the header has 5 \(a comma in an '
                      r'unquoted field\?\)',
    'short_row': r'train.csv:3: 3 fields where the header has 5',
    'infinite_time': r"train.csv:3: time_start/time_end are not finite numbers: 'inf'",
    'differs': r"train.csv:3: clip 'y0_000000_000010' of split train is listed again, "
               r'differently \(first at .*train.csv:2\)',
    'empty_file': r'train.csv: empty file \(no rows\)',
    'header_only': r'train.csv: no rows after the header',
    'header_twice': r'train.csv:1: column label appears twice in the header',
    'a_file': r'--annotations .*train.csv: not a directory \(expected the directory '
              r'holding the split CSVs\)',
}


@pytest.mark.parametrize('case', list(KINETICS_CASES))
def test_hostile_kinetics_csvs_are_one_line_naming_file_and_line(
    case, tmp_path, read_only, capsys):
  line = read_only(capsys, str(tmp_path), 'kinetics400', kinetics_case(str(tmp_path), case))
  assert re.search(KINETICS_CASES[case], line), line


def other_case(root, case):
  """(dataset, annotations, videos) of a hostile file of another release."""
  annotations = os.path.join(root, 'annotations')
  path = lambda name: os.path.join(annotations, name)
  if case.startswith('ssv2'):
    labels = {'Holding something': '0', 'Pushing something': '1'}
    train = [{'id': '1', 'template': 'Holding [something]'}]
    if case == 'ssv2_newline':
      labels['Pushing\nsomething'] = labels.pop('Pushing something')
    elif case == 'ssv2_index':
      labels['Pushing something'] = None
    elif case == 'ssv2_same_index':
      labels['Pushing something'] = '0'
    elif case == 'ssv2_template':
      train = [{'id': '1', 'template': 7}]
    elif case == 'ssv2_not_a_list':
      train = {'id': '1'}
    for name, value in (('labels', labels), ('train', train), ('validation', [])):
      write_bytes(path(f'{SSV2}{name}.json'), json.dumps(value).encode())
    if case == 'ssv2_latin1':
      write_bytes(path(f'{SSV2}labels.json'), '{\n"Holding café": "0"}'.encode('latin-1'))
    if case == 'ssv2_deep':
      write_bytes(path(f'{SSV2}train.json'), b'[' * 100000)
    return 'ssv2', annotations, None
  if case.startswith('epic'):
    verbs = [[0, 'take'], [1, 'put']]
    if case == 'epic_same_key':
      verbs[1][1] = 'take'
    elif case == 'epic_tab':
      verbs[1][1] = 'put\tdown'
    for kind, rows in (('verb', verbs), ('noun', [[0, 'cup']])):
      write(path(f'EPIC_100_{kind}_classes.csv'), rows, ['id', 'key'])
    stop_time = '00:00:nan' if case == 'epic_nan' else '00:00:01.00'
    stop_frame = 10 ** 12 if case == 'epic_frames' else 60
    write(path('EPIC_100_train.csv'),
          [['P01_01_0', 'P01_01', '00:00:00.00', stop_time, 1, stop_frame, 1, 0]],
          ['narration_id', 'video_id', 'start_timestamp', 'stop_timestamp', 'start_frame',
           'stop_frame', 'verb_class', 'noun_class'])
    videos = os.path.join(root, 'videos')
    os.makedirs(os.path.join(videos, 'P01', 'rgb_frames', 'P01_01'))
    return 'epic_kitchens_100', annotations, videos
  if case.startswith('moments'):
    categories = [['running', 0], ['blocking', 1]]
    if case == 'moments_tab':
      categories[1][0] = 'block\ting'
    elif case == 'moments_same_index':
      categories[1][1] = 0
    write(path('moments_categories.txt'), categories)
    write(path('trainingSet.csv'), [['running/x.mp4', 'running', 3, 0]])
    return 'moments_in_time', annotations, None
  videos = os.path.join(root, 'videos')
  if case == 'folder_tree_newline':
    vf.write_bad(os.path.join(videos, 'train', 'cat\ndog', 'a.mp4'), 'empty')
    return 'video_folder', None, videos
  if case == 'folder_listing_is_a_directory':
    os.makedirs(path('list.csv'))
    return 'video_folder', path('list.csv'), None
  row = ['a\x00.mp4', 'run'] if case == 'folder_nul_path' else ['a.mp4', 'ru\rn']
  return 'video_folder', write(path('list.csv'), [['b.mp4', 'run'], row]), None


OTHER_CASES = {
    'ssv2_newline': r"labels.json: class 1: class name 'Pushing\\nsomething' contains the "
                    r'control character U\+000A',
    'ssv2_index': r"labels.json: template 'Pushing something' has index None, not a whole "
                  r'number',
    'ssv2_same_index': r"labels.json: templates 'Holding something' and 'Pushing "
                       r"something' both have index 0",
    'ssv2_template': r'train.json: entry 1: expected keys id \(a string\) and template',
    'ssv2_not_a_list': r'train.json: expected a JSON list, got dict',
    'ssv2_latin1': r'labels.json:2: not UTF-8 text \(byte 0xe9 at column 13\)',
    'ssv2_deep': r'train.json: not valid JSON \(nested too deeply\)',
    'epic_same_key': r"EPIC_100_verb_classes.csv:3: key 'take' again \(first at line 2\)",
    'epic_tab': r"EPIC_100_verb_classes.csv:3: class key 'put\\tdown' contains the "
                r'control character U\+0009',
    'epic_frames': r'EPIC_100_train.csv:2: start_frame 1 .. stop_frame 1000000000000 is '
                   r'over 1000000 frames',
    'epic_nan': r'EPIC_100_train.csv:2: malformed class, timestamp or frame field',
    'moments_tab': r"moments_categories.txt:2: label 'block\\ting' contains the control "
                   r'character U\+0009',
    'moments_same_index': r'moments_categories.txt:2: index 0 again \(first at line 1\)',
    'folder_tree_newline': r"videos/train: class directory name 'cat\\ndog' contains",
    'folder_listing_is_a_directory': r'list.csv: cannot read it \(Is a directory\)',
    'folder_nul_path': r"list.csv:2: clip id 'a\\x00.mp4' contains the control character "
                       r'U\+0000',
    'folder_carriage_return': r"list.csv:2: label 'ru\\rn' contains the control character "
                              r'U\+000D',
}


@pytest.mark.parametrize('case', list(OTHER_CASES))
def test_hostile_files_of_the_other_releases_are_one_line(case, tmp_path, read_only,
                                                          capsys):
  dataset, annotations, videos = other_case(str(tmp_path), case)
  line = read_only(capsys, str(tmp_path), dataset, annotations, videos)
  assert re.search(OTHER_CASES[case], line), line


def test_a_label_with_a_newline_is_exit_2_and_one_line_and_nothing_written(tmp_path):
  """The process boundary: `python -m vivit.prepare` on a quoted label holding a
  newline (it shifted every class index after it in label.labels.txt)."""
  annotations = kinetics_case(str(tmp_path), 'newline')
  os.makedirs(tmp_path / 'videos')
  result = subprocess.run(
      [sys.executable, '-m', 'vivit.prepare', 'kinetics400', '--videos',
       str(tmp_path / 'videos'), '--annotations', annotations, '--data_dir',
       str(tmp_path / 'tfds')], env=run_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.splitlines() == [
      f"error: {annotations}/train.csv:3: label 'tying\\nbow tie' contains the control "
      f'character U+000A; it must be one line of printable text'], result.stderr[-3000:]
  assert not any('labels.txt' in name for _, _, files in os.walk(tmp_path)
                 for name in files)
