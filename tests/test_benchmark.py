"""`vivit-benchmark`: every measurement end to end on the CPU at tiny sizes, both
files written with their fields, MFU against a given peak, the vendors' peaks by
device kind, the attention each call ran (on a simulated GPU too), and its
arguments' one-line errors."""
import json

import jax
import jax.numpy as jnp
import pytest

from vivit import benchmark, cli, peaks
from vivit.models import attention, build_model, variants

TINY = ['--model', 'S/16x2', '--layers', '1', '--frames', '4', '--resolution', '32',
        '--batch', '2', '--repeats', '1']


def test_the_command_measures_each_pass_and_writes_both_files(tmp_path, capsys):
  out = tmp_path / 'cpu'
  argv = TINY + ['--variants', '1', '--dtypes', 'float32', '--peak_tflops', '2',
                 '--in_process', '--no_hf', '--out', str(out)]
  assert benchmark.main(argv) == 0
  printed = capsys.readouterr().out
  assert '[1/2] model 1 (spatio_temporal) float32 forward' in printed
  assert '[2/2] model 1 (spatio_temporal) float32 train' in printed
  report = json.loads((tmp_path / 'cpu.json').read_text())
  assert report['complete'] and report['device']['kind'] == 'cpu'
  assert report['hf'] == [] and report['hf_skipped'] == '--no_hf'
  assert [(r['variant'], r['pass']) for r in report['rows']] == [
      (variants.SPATIO_TEMPORAL, 'forward'), (variants.SPATIO_TEMPORAL, 'train')]
  forward, train = report['rows']
  for row in report['rows']:
    assert row['clips_per_s'] == pytest.approx(2 / row['seconds'])
    assert row['compile_s'] > 0 and row['peak_bytes'] > 0
    assert row['mfu'] == pytest.approx(row['flops_per_clip'] * row['clips_per_s'] / 2e12)
    # One joint attention over 2x2x2 tubelets and the CLS token, the fused CPU kernel.
    assert row['attention'] == [{'part': 'all', 'shape': [2, 9, 6, 64], 'dtype': 'float32',
                                 'implementation': 'fused', 'calls': 1}]
  # The train step: forward, backward (about twice the forward) and the update.
  assert 2.5 < train['flops_per_clip'] / forward['flops_per_clip'] < 3.5
  table = (tmp_path / 'cpu.md').read_text()
  assert '| model | dtype | pass | clips/s | vs HF |' in table
  assert '| 1 (spatio_temporal) | float32 | train |' in table
  assert 'fused x1 (9 tokens)' in table and '(--peak_tflops)' in table

  # The files are not replaced without --overwrite: one line before anything runs.
  assert cli.run(benchmark._main, argv) == 2  # pylint: disable=protected-access
  err = capsys.readouterr().err
  assert err.startswith('error: --out: ') and 'exist; add --overwrite' in err
  assert err.count('\n') == 1


def test_the_peak_of_each_known_device_kind():
  kinds = {'NVIDIA H100 80GB HBM3': ('H100 SXM', 989.5, 494.5),
           'NVIDIA H100 PCIe': ('H100 PCIe', 756.5, 378.0),
           'NVIDIA A100-SXM4-80GB': ('A100 SXM', 312.0, 156.0),
           'NVIDIA A100-PCIE-40GB': ('A100 PCIe', 312.0, 156.0),
           'NVIDIA H200': ('H200 SXM', 989.5, 494.5),
           'NVIDIA L4': ('L4', 121.0, 60.0),
           'TPU v4': ('TPU v4', 275.0, 275.0),
           'TPU v5 lite': ('TPU v5e', 197.0, 197.0)}
  for kind, expected in kinds.items():
    assert tuple(peaks.device_peak(kind)) == expected, kind
  for unknown in ('cpu', 'NVIDIA L40S', 'Tesla V100-SXM2-16GB'):
    assert peaks.device_peak(unknown) is None, unknown


def test_mfu_is_the_achieved_rate_over_the_peak_given_or_known():
  assert peaks.utilisation(500e9, 100, 100) == pytest.approx(0.5)
  assert peaks.utilisation(500e9, 100, None) is None
  report = {'device': {'peak_tflops_given': None,
                       'peak': peaks.device_peak('NVIDIA L4')._asdict()}}
  row = {'dtype': 'bfloat16', 'clips_per_s': 10.0}
  benchmark.add_utilisation(report, row, 1.21e12)
  assert row['tflops'] == pytest.approx(12.1) and row['mfu'] == pytest.approx(0.1)
  report['device']['peak_tflops_given'] = 24.2  # --peak_tflops wins over the table
  benchmark.add_utilisation(report, row, 1.21e12)
  assert row['mfu'] == pytest.approx(0.5)


def test_each_attention_call_is_recorded_with_what_auto_runs_there():
  h100 = attention.Accelerator('gpu', True, (9, 0), 91000)  # simulated
  spec = dict(model='S/16x2', layers=1, frames=4, resolution=32, batch=2,
              dtype='bfloat16', attention='auto', variant=variants.FACTORISED_DOT_PRODUCT)
  config = benchmark.model_config(spec)
  calls = []
  with benchmark.recorded_attention(calls, h100):
    jax.eval_shape(lambda: build_model(config).init_with_output(
        jax.random.PRNGKey(0), jnp.zeros((2, 4, 32, 32, 3))))
  # Half of the 6 heads over the 2 time steps of each of 4 places, half over space.
  expected = [('time', (8, 2, 3, 64)), ('space', (4, 4, 3, 64))]
  assert [(c['part'], tuple(c['shape'])) for c in calls] == expected
  for call in calls:
    query = jax.ShapeDtypeStruct(tuple(call['shape']), jnp.bfloat16)
    assert call['implementation'] == attention.describe_auto_implementation(
        query, query, query, h100)
  assert benchmark.attention_cell(benchmark.attention_summary(calls + calls)) == (
      f"{calls[0]['implementation']} x2 (2 tokens, time), "
      f"{calls[1]['implementation']} x2 (4 tokens, space)")


@pytest.mark.parametrize('arguments, message', [
    (['--variants', '1,5'], "--variants 1,5: unknown variant '5'; give model numbers 1-4"),
    (['--dtypes', 'float16'], '--dtypes float16: expected some of float32,bfloat16'),
    (['--frames', '5'], "--frames 5: not a multiple of B/16x2's tubelet length 2"),
    (['--model', 'B/16x2-FE'], '--model B/16x2-FE: give the size without a variant suffix'),
    (['--peak_tflops', '0'], "argument --peak_tflops: '0' is not a finite number > 0"),
])
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, arguments, message):
  assert cli.run(benchmark._main, arguments + ['--out', str(tmp_path / 'x')]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f'error: {message}') and err.count('\n') == 1, err
  assert not list(tmp_path.iterdir())


def test_a_failed_measurement_is_its_error_on_the_last_line(capsys):
  spec = dict(model='S/16x2', variant='no_such_variant', task='measure')
  assert benchmark.child(json.dumps(spec)) == 1
  captured = capsys.readouterr()
  result = json.loads(captured.out.strip().splitlines()[-1])
  assert result['error'].startswith("ConfigError: unknown variant 'no_such_variant'")
  assert 'Traceback' in captured.err  # the parent shows it with --verbose


@pytest.mark.slow
def test_each_variant_in_its_own_process_beside_hf_transformers(tmp_path):
  """The default mode, a process per measurement, every variant and dtype, with HF's
  model 1 on the CPU (`--hf`)."""
  assert benchmark.main(TINY + ['--hf', '--out', str(tmp_path)]) == 0
  report = json.loads((tmp_path / 'benchmark.json').read_text())
  assert len(report['rows']) == 16 and not any('error' in r for r in report['rows'])
  assert [(r['dtype'], r['pass']) for r in report['hf']] == [
      ('float32', 'forward'), ('float32', 'train'), ('bfloat16', 'forward'),
      ('bfloat16', 'train')]
  assert all(r['attention'] == 'sdpa' and r['clips_per_s'] > 0 for r in report['hf'])
  assert 'HF transformers (model 1)' in (tmp_path / 'benchmark.md').read_text()
