"""Models out of JAX: a serialized `jax.export` artifact or a TensorFlow Lite flatbuffer.

  python -m compact_flax.export --checkpoint DIR --format jax --output model.jax
  python -m compact_flax.export --model cct_7_3x1_32 --pretrained --format tflite --output m.tflite
  python -m compact_flax.export --checkpoint DIR --format tflite --int8 --output model_int8.tflite

The batch dimension is symbolic: any batch size runs. Beside the file, `FILE.json` says what the
model expects (NHWC float32 images of `img_size`, normalised with `mean`/`std` after the eval
resize; or a text model's word ids, mask and vocabulary) and the class names.

`jax`: `jax.export.deserialize(open(FILE, 'rb').read()).call(x)` in any JAX of a compatible
version, weights included. `tflite`: through `jax2tf` (StableHLO inside a TF function) and the
TFLite converter, float32 or with dynamic-range int8 weights (`--int8`); the vision models only.
The model is traced with the generic kernels (`lax.conv_general_dilated`, `lax.reduce_window`),
not the CPU training kernels, which the TFLite converter does not take.
"""

import argparse
import json
import os
import sys
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from compact_flax import kernels
from compact_flax import merge
from compact_flax import predict

FORMATS = ('jax', 'tflite')


def _is_text(model) -> bool:
  return hasattr(model, 'seq_len')


def serving_fn(model, variables):
  """The eval-mode forward with the weights closed over: images, or (ids, mask) for text."""
  if _is_text(model):
    return lambda ids, mask: model.apply(variables, ids, mask=mask).astype(jnp.float32)
  return lambda images: model.apply(variables, images).astype(jnp.float32)


def input_specs(model, batch='b') -> Tuple[jax.ShapeDtypeStruct, ...]:
  """The inputs with a symbolic batch dimension (`batch` an int for a fixed one)."""
  b = jax.export.symbolic_shape(batch)[0] if isinstance(batch, str) else batch
  shape, dtype = merge.input_spec(model)
  if _is_text(model):
    return (jax.ShapeDtypeStruct((b,) + shape, jnp.int32),
            jax.ShapeDtypeStruct((b,) + shape, jnp.bool_))
  return (jax.ShapeDtypeStruct((b,) + shape, dtype),)


def metadata(model, data: Dict[str, Any], fmt: str) -> Dict[str, Any]:
  """What the artifact expects and returns, written beside it as JSON."""
  out = {'format': fmt, 'model': type(model).__name__, 'num_classes': model.num_classes,
         'class_names': list(data.get('class_names', [])), 'outputs': 'logits (batch, classes)'}
  if _is_text(model):
    out.update(inputs=['ids (batch, seq_len) int32', 'mask (batch, seq_len) bool'],
               seq_len=model.seq_len, text=data.get('text'))
  else:
    h, w, c = merge.image_shape(model)
    out.update(inputs=[f'images (batch, {h}, {w}, {c}) float32 NHWC'], img_size=[h, w],
               **{k: data[k] for k in ('mean', 'std', 'crop_pct', 'interpolation') if k in data})
  return out


def export_jax(model, variables) -> bytes:
  """A serialized `jax.export.Exported` for CPU, GPU and TPU, with a symbolic batch."""
  with kernels.target('generic'):
    exported = jax.export.export(jax.jit(serving_fn(model, variables)),
                                 platforms=('cpu', 'cuda', 'tpu'))(*input_specs(model))
  return exported.serialize()


def export_tflite(model, variables, *, int8: bool = False) -> bytes:
  """A TFLite flatbuffer (float32, or dynamic-range int8 weights) with a dynamic batch."""
  if _is_text(model):
    raise ValueError('TFLite export takes the vision models; export a text model as --format jax.')
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('TFLite export needs TensorFlow: pip install "compact-flax[data]".') from None
  h, w, c = merge.image_shape(model)
  with kernels.target('generic'):
    fn = jax2tf.convert(serving_fn(model, variables), polymorphic_shapes=[f'(b, {h}, {w}, {c})'],
                        native_serialization_platforms=('cpu',))
    tf_fn = tf.function(fn, autograph=False,
                        input_signature=[tf.TensorSpec([None, h, w, c], tf.float32, 'images')])
    concrete = tf_fn.get_concrete_function()
  converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf_fn)
  if int8:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  return converter.convert()


def tflite_predict(flatbuffer: bytes, images: np.ndarray) -> np.ndarray:
  """Logits of a TFLite model on a batch, through the TFLite interpreter."""
  import warnings  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():  # its notice that LiteRT's interpreter will replace it
    warnings.simplefilter('ignore')
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
  inp = interpreter.get_input_details()[0]
  interpreter.resize_tensor_input(inp['index'], images.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(inp['index'], np.asarray(images, np.float32))
  interpreter.invoke()
  return interpreter.get_tensor(interpreter.get_output_details()[0]['index'])


def digits_agreement(model, variables, flatbuffer: bytes) -> Dict[str, float]:
  """Top-1 of the Flax model and of a TFLite flatbuffer on the digits eval split, and how often
  their top-1 classes agree: what int8 weights cost, on real data."""
  from compact_flax import data as data_lib  # pylint: disable=g-import-not-at-top
  source = data_lib.digits()
  images, labels = source.eval_inputs['image'], source.eval_labels
  ours = np.asarray(jax.jit(model.apply)(variables, images)).argmax(-1)
  lite = tflite_predict(flatbuffer, images).argmax(-1)
  return {'flax_top1': float((ours == labels).mean()), 'tflite_top1': float((lite == labels).mean()),
          'agreement': float((ours == lite).mean())}


def export(model, variables, data, fmt: str, output: str, *, int8: bool = False) -> str:
  """Writes `output` and `output.json`; returns a one-line summary."""
  if fmt not in FORMATS:
    raise ValueError(f"Unknown format '{fmt}'; choose one of {', '.join(FORMATS)}.")
  if int8 and fmt != 'tflite':
    raise ValueError('--int8 applies to --format tflite.')
  folder = os.path.dirname(os.path.abspath(output))
  if not os.path.isdir(folder):
    raise ValueError(f'--output {output}: the folder {folder} does not exist.')
  blob = export_jax(model, variables) if fmt == 'jax' else export_tflite(model, variables,
                                                                         int8=int8)
  meta = metadata(model, data, fmt + ('-int8' if int8 else ''))
  try:
    with open(output, 'wb') as f:
      f.write(blob)
    with open(output + '.json', 'w') as f:
      json.dump(meta, f, indent=1)
  except OSError as e:
    raise ValueError(f'cannot write {output} ({e.strerror or e}).') from None
  line = f'Wrote {output} ({len(blob) / 1e6:.2f} MB, {meta["format"]}) and {output}.json.'
  if int8 and data.get('dataset') == 'digits':
    acc = digits_agreement(model, variables, blob)
    line += (f' Digits eval top-1: {acc["flax_top1"]:.4f} float32, {acc["tflite_top1"]:.4f} int8 '
             f'(top-1 agreement {acc["agreement"]:.4f}).')
  return line


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint', help='converted or trained checkpoint (or a workdir)')
  parser.add_argument('--model', help='registered name, with --pretrained')
  parser.add_argument('--pretrained', action='store_true')
  parser.add_argument('--source', help='local .pth, converted dir or URL for --pretrained')
  parser.add_argument('--format', required=True, help=' | '.join(FORMATS))
  parser.add_argument('--int8', action='store_true', help='TFLite: dynamic-range int8 weights')
  parser.add_argument('--output', required=True)
  args = parser.parse_args(argv)
  try:
    if args.format not in FORMATS:
      raise ValueError(f"Unknown format '{args.format}'; choose one of {', '.join(FORMATS)}.")
    model, variables, data = predict.load(args)
    print(export(model, variables, data, args.format, args.output, int8=args.int8))
  except (*predict.LOAD_ERRORS, SystemExit) as e:
    print(f'error: {predict.describe(e) if isinstance(e, Exception) else e.code}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
