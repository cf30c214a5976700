"""`vivit-export`: a SavedModel that TensorFlow alone serves, a StableHLO artifact that
`jax.export` alone calls, and an HF directory, each giving what `vivit-predict` gives
on the same frames; bad input refused where it is passed in."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from helpers import (DEFAULT_VARIANT_CASES, VARIANT_CASES, default_or_slow, random_params,
                     run_env, tiny_model_config)
from vivit import checkpoints, export, inference, serving, video
from vivit.demo_video import write_frames
from vivit.models import build_model, variants

NAMES = ['archery', 'bowling', 'cooking', 'dancing', 'eating']

# Run in a process of their own, where importing vivit, jax or flax (or for the JAX
# artifact, tensorflow) fails: what each format needs is what its user has.
TF_ONLY = """
import json, sys
for blocked in ('vivit', 'jax', 'jaxlib', 'flax'):
  sys.modules[blocked] = None
import numpy as np
import tensorflow as tf
inputs = np.load(sys.argv[2])
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures['serving_default']
results, errors = {}, {}
for name in inputs.files:
  try:
    output = serve(video=tf.constant(inputs[name]))
    results.update({f'{name}/{key}': value.numpy().astype(  # names: bytes, not objects
        bytes if value.dtype == tf.string else value.numpy().dtype)
                    for key, value in output.items()})
  except Exception as e:
    errors[name] = ' '.join(str(e).split())
np.savez(sys.argv[3], **results)
print(json.dumps({'errors': errors,
                  'class_names': [n.decode() for n in model.class_names['label'].numpy()],
                  'loaded': sorted(m for m in ('jax', 'vivit', 'flax')
                                   if sys.modules.get(m) is not None)}))
"""

JAX_ONLY = """
import json, sys
for blocked in ('vivit', 'flax', 'tensorflow'):
  sys.modules[blocked] = None
import jax
import numpy as np
with open(sys.argv[1] + '/model.stablehlo', 'rb') as f:
  exported = jax.export.deserialize(f.read())
params = dict(np.load(sys.argv[1] + '/params.npz'))
inputs = np.load(sys.argv[2])
results, errors = {}, {}
for name in inputs.files:
  try:
    output = exported.call(params, inputs[name])
    results.update({f'{name}/{key}': np.asarray(value) for key, value in output.items()})
  except Exception as e:
    errors[name] = ' '.join(str(e).split())
np.savez(sys.argv[3], **results)
print(json.dumps({'errors': errors, 'platforms': list(exported.platforms)}))
"""


def decode(jpegs):
  """Frames as `vivit-predict` decodes its JPEGs (TF's decoder, not PIL's: they differ
  by a level here and there)."""
  import tensorflow as tf
  return np.stack([tf.io.decode_jpeg(jpeg, channels=3).numpy() for jpeg in jpegs])


@pytest.fixture(scope='module')
def served(tmp_path_factory):
  """(checkpoint, its Setup, a real mp4, its frames as predict decodes them, the
  frames at the source size): a tiny model 1 with class names, and 1.2 s of noise
  at 25 fps, 24x32."""
  root = tmp_path_factory.mktemp('served')
  config = tiny_model_config()
  checkpoint = str(root / 'params')
  checkpoints.save_params(checkpoint, config, random_params(config), NAMES)
  rng = np.random.RandomState(0)
  mp4 = write_frames(str(root / 'noise.mp4'),
                     (rng.randint(0, 256, (24, 32, 3), np.uint8) for _ in range(30)), 25)
  setup = inference.load(checkpoint)
  as_predicted = decode(video.read_video(mp4, video.Resample(25, setup.min_resize)).frames)
  at_source = decode(video.read_video(mp4, video.Resample(25, 0)).frames)
  return checkpoint, setup, mp4, as_predicted, at_source


def reference(setup, frames):
  """Probabilities of the 1x1 view as the evaluation cuts it (TF's pipeline), `[batch,
  classes]`: the numbers the exports must give."""
  import tensorflow as tf
  from vivit.input import sampling
  views = np.stack([sampling.eval_views(tf.constant(clip), num_clips=1, num_crops=1,
                                        **setup.view()).numpy()[0] for clip in frames])
  logits = build_model(setup.model_config).apply({'params': setup.params}, views)
  return np.asarray(jax.nn.softmax(logits, axis=-1))


def run_alone(script, model_dir, inputs, tmp_path):
  np.savez(tmp_path / 'inputs.npz', **inputs)
  result = subprocess.run(
      [sys.executable, '-c', script, model_dir, str(tmp_path / 'inputs.npz'),
       str(tmp_path / 'outputs.npz')], capture_output=True, text=True, env=run_env(),
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1]), dict(np.load(tmp_path / 'outputs.npz'))


def bad_inputs(frames):
  return {'float': frames[None].astype(np.float32), 'rank_4': frames,
          'few_frames': frames[None, :7], 'no_width': frames[None, :, :, :0]}


def test_the_saved_model_serves_predicts_probabilities_with_tensorflow_alone(
    served, tmp_path, capsys):
  checkpoint, setup, mp4, frames, at_source = served
  out = str(tmp_path / 'saved_model')
  assert export.main(['--checkpoint', checkpoint, '--out', out]) == 0
  assert 'at least 8 frames' in capsys.readouterr().out  # 4 frames at stride 2
  # Three different videos in a batch: the 1x1 view of each, its own row.
  three = np.stack([frames, frames[::-1], np.roll(frames, 5, axis=0)])
  inputs = dict(one=frames[None], three=three, source_size=at_source[None],
                **bad_inputs(frames))
  told, outputs = run_alone(TF_ONLY, out, inputs, tmp_path)
  assert told['loaded'] == [] and told['class_names'] == NAMES

  from vivit.predict import predict
  predicted = dict(predict(checkpoint, mp4, top=len(NAMES))['label'])
  np.testing.assert_allclose(outputs['one/probabilities'][0],
                             [predicted[name] for name in NAMES], atol=1e-4)
  np.testing.assert_allclose(outputs['three/probabilities'], reference(setup, three),
                             atol=1e-5)
  # Resized inside (24x32 -> 18x24): XLA fuses the interpolation's multiply-adds where
  # TF rounds each, so a rare pixel lands one level apart (1 of 3072 here).
  np.testing.assert_allclose(outputs['source_size/probabilities'],
                             reference(setup, at_source[None]), atol=1e-3)
  for probabilities, top in ((outputs['three/probabilities'], outputs['three/top_classes']),):
    assert [[name.decode() for name in row] for row in top] == [
        [NAMES[i] for i in np.argsort(-row, kind='stable')] for row in probabilities]

  errors = told['errors']
  assert sorted(errors) == sorted(bad_inputs(frames))
  assert 'was expected to be a uint8 tensor but is a float tensor' in errors['float']
  assert 'Shape of tensor video [30,18,24,3] is not compatible with expected shape ' \
         '[?,?,?,?,3]' in errors['rank_4']
  assert ('video: fewer frames than one clip spans (8: 4 frames at stride 2, 0.32s at '
          '25 fps); frames given' in errors['few_frames'] and '[7]' in errors['few_frames'])
  assert 'video: an empty axis' in errors['no_width']
  described = json.load(open(os.path.join(out, 'serving.json')))
  assert described['input']['min_frames'] == 8 and described['input']['frame_rate'] == 25
  assert described['class_names'] == {'label': NAMES}


def test_the_stablehlo_artifact_runs_with_jax_alone(served, tmp_path):
  checkpoint, setup, _, frames, at_source = served
  out = str(tmp_path / 'stablehlo')
  export.export(checkpoint, out, 'stablehlo')
  inputs = dict(three=np.stack([frames, frames[::-1], np.roll(frames, 5, axis=0)]),
                source_size=at_source[None], **bad_inputs(frames))
  told, outputs = run_alone(JAX_ONLY, out, inputs, tmp_path)
  assert told['platforms'] == list(export.PLATFORMS)
  for name, tolerance in (('three', 1e-5), ('source_size', 1e-3)):  # as the SavedModel
    expected = reference(setup, inputs[name])
    np.testing.assert_allclose(outputs[f'{name}/probabilities'], expected, atol=tolerance)
    np.testing.assert_array_equal(outputs[f'{name}/top_classes'],
                                  np.argsort(-expected, axis=-1, kind='stable'))
  errors = told['errors']
  assert sorted(errors) == sorted(bad_inputs(frames))
  assert 'Dtype mismatch for args[1]: expected uint8 and called with float32' in errors['float']
  assert 'Rank mismatch for args[1]' in errors['rank_4']
  assert ("Expected value >= 1 for dimension variable 'frames_over_7'" in errors['few_frames']
          and "'frames_over_7 + 7' for dimension args[1].shape[1] (= 7)" in errors['few_frames'])
  assert "dimension variable 'width'" in errors['no_width']


def test_the_view_is_the_evaluations_at_any_frame_size():
  """`serving.centre_view` (JAX, only the crop interpolated) cuts exactly what
  `sampling.eval_views` (TF, the evaluation) cuts: frame counts below, at and above
  one clip, frames smaller and larger than the view, both orientations."""
  import tensorflow as tf
  from vivit.input import sampling
  view = dict(num_frames=4, stride=2, min_resize=18, crop_size=16)
  rng = np.random.RandomState(1)
  for shape in [(8, 18, 24), (11, 18, 18), (12, 30, 20), (9, 17, 40), (20, 100, 61),
                (5, 10, 10)]:
    frames = rng.randint(0, 256, shape + (3,), np.uint8)
    expected = sampling.eval_views(tf.constant(frames), num_clips=1, num_crops=1, **view)
    np.testing.assert_array_equal(serving.centre_view(frames[None], **view),
                                  expected.numpy(), err_msg=str(shape))


def test_a_two_head_model_serves_each_head(two_head_checkpoint, tmp_path):
  setup = inference.load(two_head_checkpoint)
  fn, params = serving.serving_function(setup)
  clip = np.random.RandomState(2).randint(0, 256, (2, 9, 20, 24, 3), np.uint8)
  result = fn(params, clip)
  assert sorted(result) == ['noun_probabilities', 'noun_top_classes',
                            'verb_probabilities', 'verb_top_classes']
  logits = build_model(setup.model_config).apply(
      {'params': setup.params}, serving.centre_view(clip, **setup.view()))
  np.testing.assert_allclose(result['verb_probabilities'],
                             np.asarray(jax.nn.softmax(logits[:, :2])),
                             atol=1e-6)
  assert result['noun_top_classes'].shape == (2, 3)
  with pytest.raises(export.CheckpointError, match='^cannot export to transformers: a '
                     'model with several heads \\(verb, noun\\); HF ViViT has one '
                     'classifier$'):
    export.export(two_head_checkpoint, str(tmp_path / 'hf'), 'transformers')
  assert not os.path.exists(tmp_path / 'hf')
  with pytest.raises(export.OutputError, match='^--out gs://b/served: a local directory'):
    export.export(two_head_checkpoint, 'gs://b/served')


def test_the_transformers_export_keeps_the_class_names(served, tmp_path, capsys):
  import torch
  from transformers import VivitForVideoClassification
  from vivit.convert import to_hf_pixel_values
  checkpoint, setup, _, _, _ = served
  out = str(tmp_path / 'hf')
  assert export.main(['--checkpoint', checkpoint, '--out', out, '--format',
                      'transformers']) == 0
  hf = VivitForVideoClassification.from_pretrained(out).eval()
  assert [hf.config.id2label[i] for i in range(len(NAMES))] == NAMES
  clips = np.random.RandomState(3).uniform(-1, 1, (2, 4, 16, 16, 3)).astype(np.float32)
  ours = build_model(setup.model_config).apply({'params': setup.params}, clips)
  with torch.no_grad():
    theirs = hf(pixel_values=torch.from_numpy(to_hf_pixel_values(clips))).logits.numpy()
  np.testing.assert_allclose(theirs, ours, atol=1e-5)

  # Model 2 has no transformers class: one line, nothing written.
  config = tiny_model_config(variants.FACTORISED_ENCODER)
  other = str(tmp_path / 'fe')
  checkpoints.save_params(other, config, random_params(config), NAMES)
  capsys.readouterr()
  assert export.main(['--checkpoint', other, '--out', str(tmp_path / 'fe_hf'),
                      '--format', 'transformers']) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: cannot export to transformers: variant 'factorised_encoder'")
  assert err.count('\n') == 1 and not os.path.exists(tmp_path / 'fe_hf')


# The default run: model 4 (its split heads reshape the symbolic batch); model 1 above.
@pytest.mark.parametrize('case', default_or_slow(VARIANT_CASES, [
    case for case in DEFAULT_VARIANT_CASES if case[0] == variants.FACTORISED_DOT_PRODUCT]))
def test_every_variant_exports_with_symbolic_batch_frames_and_size(case, tmp_path):
  """Each variant traces with symbolic shapes and, lowered for every platform,
  gives what the model gives on this one."""
  variant, embedding, classifier = case
  config = tiny_model_config(variant, embedding, classifier)
  checkpoints.save_params(str(tmp_path / 'params'), config, random_params(config), NAMES)
  setup = inference.load(str(tmp_path / 'params'))
  exported, params = export.exported_function(setup)
  # Frames at the short side the view is cut at: the resize is the identity, exact under
  # any fusion (a resize's rounding is `test_the_view_is_the_evaluations_...`'s).
  clips = np.random.RandomState(4).randint(0, 256, (2, 9, 18, 24, 3), np.uint8)
  logits = build_model(setup.model_config).apply(
      {'params': setup.params}, serving.centre_view(clips, **setup.view()))
  np.testing.assert_allclose(exported.call(params, clips)['probabilities'],
                             jax.nn.softmax(logits, axis=-1), atol=1e-5)
