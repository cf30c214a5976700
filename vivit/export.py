"""A serving model: `vivit-export --checkpoint CKPT --out DIR [--format FORMAT]`.

  vivit-export --checkpoint runs/demo --out serving/demo
  vivit-export --checkpoint runs/demo --out serving/demo_jax --format stablehlo
  vivit-export --checkpoint runs/demo --out serving/demo_hf --format transformers

CKPT is anything `vivit-predict` takes (a training workdir, a params directory, an HF
ViViT directory or a Hub id), read as it reads it: the workdir's data settings give
the frame rate, stride and short side, `--fps` and `--stride` override them.

  saved_model   a TF SavedModel (jax2tf) for TF Serving or any TensorFlow runtime.
                Its `serving_default` signature takes `video`: uint8 [batch, frames,
                height, width, 3], RGB frames at the model's frame rate, any size,
                at least one clip's span of frames; it cuts the evaluation's 1x1 view
                itself (the centre clip, the short side resized, the centre crop)
                and returns `probabilities` [batch, classes] and `top_classes`
                [batch, k], the class names (per head '<head>_...' for a model with
                several). The class names are also the model's `class_names`.
  stablehlo     the same function for JAX services: `model.stablehlo` (`jax.export`,
                lowered for CPU, CUDA and TPU) called as `exported.call(params,
                video)` with `params.npz`, returning class indices in `top_classes`.
  transformers  model 1 as an HF `VivitForVideoClassification` directory, with the
                class names as its `id2label`.

Every format writes `serving.json` beside it: the input it takes (frame rate, fewest
frames), the outputs, the preprocessing and the class names. DIR must be new or
empty; it is written whole or not at all.
"""
import json
import os
import sys
from typing import Dict, Optional

import numpy as np

from vivit import cli, outputs
from vivit.errors import CheckpointError, ConfigError, OutputError
from vivit.inference import Setup, load
from vivit.workdir import is_local

FORMATS = ('saved_model', 'stablehlo', 'transformers')
# The platforms a saved_model or stablehlo export runs on: its StableHLO is lowered
# for each (a TF Serving or JAX service on any of them picks its own at run time).
PLATFORMS = ('cpu', 'cuda', 'tpu')
STABLEHLO_FILE = 'model.stablehlo'
PARAMS_FILE = 'params.npz'
DESCRIPTION_FILE = 'serving.json'


def frames_dimension(setup: Setup) -> str:
  """The frame axis of the exported input, `frames_over_N + N` with N one clip's span
  less one: the fewest frames (one clip's span) is part of the artifact's input
  shape, so a shorter video fails where the arguments are checked, naming it."""
  from vivit.serving import span
  fewer = span(setup) - 1
  return f'frames_over_{fewer} + {fewer}' if fewer else 'frames'


def video_shape(setup: Setup) -> str:
  """The exported `video`'s polymorphic shape (`jax.export`'s notation)."""
  return f'batch, {frames_dimension(setup)}, height, width, 3'


def exported_function(setup: Setup):
  """(`jax.export.Exported`, flat params) of `setup`'s serving function
  (`vivit.serving`), with a symbolic batch, frame count and frame size, lowered for
  every platform of `PLATFORMS`."""
  import jax
  from vivit.serving import serving_function
  fn, params = serving_function(setup)
  param_specs = {name: jax.ShapeDtypeStruct(value.shape, value.dtype)
                 for name, value in params.items()}
  video = jax.ShapeDtypeStruct(jax.export.symbolic_shape(video_shape(setup)), np.uint8)
  return jax.export.export(jax.jit(fn), platforms=PLATFORMS)(param_specs, video), params


def description(setup: Setup, format_name: str) -> Dict:
  """`serving.json`: what the exported model takes and returns."""
  from vivit.serving import output_names, span
  frames = span(setup)
  described = {
      'format': format_name,
      'input': {
          'name': 'video', 'dtype': 'uint8', 'shape': '[batch, frames, height, width, 3]',
          'frame_rate': setup.fps, 'min_frames': frames,
          'note': f'RGB frames at {setup.fps:g} fps, any size, at least {frames} '
                  f'({setup.num_frames} frames at stride {setup.stride})'},
      'preprocessing': {
          'view': 'the centre clip, short side resized bilinearly, the centre crop '
                  '(the evaluation\'s 1x1 view)',
          'num_frames': setup.num_frames, 'stride': setup.stride,
          'min_resize': setup.min_resize, 'crop_size': setup.crop_size},
      'outputs': {name: head for head, names in output_names(setup.names).items()
                  for name in names},
      'class_names': setup.names,
      'model': {key: setup.model_config[key] for key in
                ('variant', 'hidden_size', 'num_layers', 'num_heads', 'num_classes')},
  }
  if format_name == 'transformers':
    del described['input'], described['outputs']
  return described


def export_stablehlo(setup: Setup, directory: str) -> None:
  """`model.stablehlo` and `params.npz` in `directory` (the module docstring)."""
  exported, params = exported_function(setup)
  with open(os.path.join(directory, STABLEHLO_FILE), 'wb') as f:
    f.write(exported.serialize())
  np.savez(os.path.join(directory, PARAMS_FILE), **params)


def export_saved_model(setup: Setup, directory: str) -> None:
  """A SavedModel in `directory` whose `serving_default` is the module docstring's."""
  import tensorflow as tf
  from jax.experimental import jax2tf
  from vivit.serving import output_names, serving_function, span
  fn, params = serving_function(setup)
  converted = jax2tf.convert(fn, polymorphic_shapes=[None, video_shape(setup)],
                             with_gradient=False, native_serialization_platforms=PLATFORMS)
  module = tf.Module()
  # Variables, not constants: the weights are stored beside the graph, not in it.
  module.params = {name: tf.Variable(value, trainable=False, name=name.replace('/', '.'))
                   for name, value in params.items()}
  module.class_names = {head: tf.Variable(names, trainable=False, name=f'{head}_names')
                        for head, names in setup.names.items()}
  fewest = span(setup)
  heads = output_names(setup.names)

  # Any shape in the signature, checked at run time: a SavedModel's signature
  # checks the dtype but not the shape it declares, and a tensor of another rank
  # would fail deep inside the model.
  @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name='video')],
               autograph=False)
  def serve(video):
    video = tf.ensure_shape(video, [None, None, None, None, 3])  # names both shapes
    shape = tf.shape(video)
    checks = [
        tf.debugging.assert_positive(shape[:4], message='video: an empty axis (batch, '
                                     'frames, height or width); shape given'),
        tf.debugging.assert_greater_equal(
            shape[1], fewest, message=f'video: fewer frames than one clip spans '
            f'({fewest}: {setup.num_frames} frames at stride {setup.stride}, '
            f'{fewest / setup.fps:.2f}s at {setup.fps:g} fps); frames given')]
    with tf.control_dependencies(checks):
      result = converted(module.params, video)
    for head, (_, top_name) in heads.items():
      result[top_name] = tf.gather(module.class_names[head], result[top_name])
    return result

  module.serve = serve
  tf.saved_model.save(module, directory, signatures={'serving_default': serve})


def check_transformers(setup: Setup) -> None:
  """CheckpointError unless transformers has `setup`'s model: model 1 as
  `check_exportable` says, with one head."""
  from vivit.convert.transformers import check_exportable
  check_exportable(setup.model_config)
  if list(setup.names) != ['label']:
    raise CheckpointError(f'cannot export to transformers: a model with several heads '
                          f'({", ".join(setup.names)}); HF ViViT has one classifier')


def export_transformers(setup: Setup, directory: str) -> None:
  """An HF directory of `setup`'s model 1 with its class names (`check_transformers`
  first)."""
  from vivit.convert import to_transformers
  to_transformers(setup.model_config, setup.params, directory,
                  class_names=setup.names['label'])


WRITERS = {'saved_model': export_saved_model, 'stablehlo': export_stablehlo,
           'transformers': export_transformers}


def export(checkpoint: str, out: str, format_name: str = 'saved_model', *,
           fps: Optional[float] = None, stride: Optional[int] = None) -> Setup:
  """Writes `checkpoint`'s serving model in `format_name` to the new directory `out`
  (whole or not at all), with `serving.json`; returns the `Setup` exported."""
  if format_name not in FORMATS:
    raise ConfigError(f'format {format_name!r}: one of {", ".join(FORMATS)}')
  if not is_local(out):
    raise OutputError(f'--out {out}: a local directory (export there, then copy it: '
                      f'TF Serving and jax read from a bucket too)')
  outputs.check_new_directory('--out', out)  # before the checkpoint is read
  setup = load(checkpoint, fps=fps, stride=stride)
  if format_name == 'transformers':
    check_transformers(setup)  # before anything is written
  with outputs.new_directory('--out', out) as directory:
    WRITERS[format_name](setup, directory)
    with open(os.path.join(directory, DESCRIPTION_FILE), 'w') as f:
      json.dump(description(setup, format_name), f, indent=2)
  return setup


def _main(argv=None) -> int:
  parser = cli.ArgumentParser(prog='vivit-export', description=__doc__)
  cli.add_checkpoint_arguments(parser)
  parser.add_argument('--out', required=True, help='a new or empty directory')
  parser.add_argument('--format', choices=FORMATS, default='saved_model',
                      help='saved_model (TF Serving, default), stablehlo (jax.export, '
                           'for JAX services) or transformers (model 1, HF directory)')
  args = parser.parse_args(argv)
  setup = export(args.checkpoint, args.out, args.format, fps=args.fps, stride=args.stride)
  from vivit.serving import span
  heads = ', '.join(f'{head} ({len(names)})' for head, names in setup.names.items())
  print(f'wrote {args.format} of the {setup.model_config.variant} model (classes: '
        f'{heads}) to {args.out}')
  if args.format != 'transformers':
    print(f'input: video uint8 [batch, frames, height, width, 3] at {setup.fps:g} fps, '
          f'at least {span(setup)} frames; see {os.path.join(args.out, DESCRIPTION_FILE)}')
  return 0


def main(argv=None) -> int:
  """`vivit-export`."""
  return cli.run(_main, argv)


if __name__ == '__main__':
  sys.exit(main())
