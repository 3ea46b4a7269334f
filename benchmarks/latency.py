"""Batch-1 inference latency on this CPU: the jitted Flax model, its TFLite export (float32 and
int8 weights) through the TFLite interpreter, and the PyTorch eager peer (vit-pytorch's CCT).

  python benchmarks/latency.py --model cct_7_3x1_32 [--peer] [--repeats 200]

Random weights (latency does not depend on them); the TFLite interpreter and PyTorch use every
core. Prints one JSON line: the median and 10th/90th
percentile milliseconds per call of each path, after warm-up.
"""

import json
import os
import sys
import time

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

import compact_flax  # pylint: disable=g-import-not-at-top
import results
from compact_flax import export
from compact_flax import merge

flags.DEFINE_string('model', 'cct_7_3x1_32', 'Registered vision model.')
flags.DEFINE_integer('repeats', 200, 'Timed calls per path.')
flags.DEFINE_bool('peer', False, "Also time vit-pytorch's CCT in PyTorch eager mode.")
flags.DEFINE_string('results', results.default_path('latency'), results.HELP)
PATHS = {'flax_jit': 'Flax jax.jit', 'tflite_float32': 'TFLite float32',
         'tflite_int8': 'TFLite dynamic-range int8', 'torch_eager': 'PyTorch eager (vit-pytorch CCT)'}
FLAGS = flags.FLAGS


def _time(fn, repeats):
  for _ in range(10):
    fn()
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append((time.perf_counter() - t) * 1e3)
  p10, p50, p90 = np.percentile(times, [10, 50, 90])
  return {'median_ms': round(p50, 3), 'p10_ms': round(p10, 3), 'p90_ms': round(p90, 3)}


def _tflite_runner(flatbuffer, x):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=os.cpu_count())
  inp = interpreter.get_input_details()[0]
  interpreter.resize_tensor_input(inp['index'], x.shape)
  interpreter.allocate_tensors()
  out = interpreter.get_output_details()[0]['index']

  def run():
    interpreter.set_tensor(inp['index'], x)
    interpreter.invoke()
    return interpreter.get_tensor(out)
  return run


def main(argv):
  del argv
  model = compact_flax.create_model(FLAGS.model)
  variables = merge.init_variables(model)
  h, w, c = merge.image_shape(model)
  x = np.random.default_rng(0).normal(size=(1, h, w, c)).astype(np.float32)
  apply = jax.jit(model.apply)
  result = {'model': FLAGS.model, 'batch': 1, 'device': jax.devices()[0].device_kind,
            'cpu_count': os.cpu_count(),
            'flax_jit': _time(lambda: apply(variables, x).block_until_ready(), FLAGS.repeats)}
  for name, int8 in (('tflite_float32', False), ('tflite_int8', True)):
    result[name] = _time(_tflite_runner(export.export_tflite(model, variables, int8=int8), x),
                         FLAGS.repeats)
  if FLAGS.peer:
    import torch  # pylint: disable=g-import-not-at-top
    from train_throughput import load_peer_cct  # pylint: disable=g-import-not-at-top
    _, kw = compact_flax.models.model_kwargs(FLAGS.model)
    peer = load_peer_cct().CCT(
        img_size=kw['img_size'], embedding_dim=kw['embedding_dim'],
        n_conv_layers=kw['n_conv_layers'], kernel_size=kw['kernel_size'], stride=kw['stride'],
        padding=kw['padding'], num_layers=kw['num_layers'], num_heads=kw['num_heads'],
        mlp_ratio=kw['mlp_ratio'], num_classes=kw['num_classes'],
        positional_embedding=kw['positional_embedding']).eval()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

    def run_peer():
      with torch.inference_mode():
        return peer(xt)
    result['torch_eager'] = _time(run_peer, FLAGS.repeats)
    result['torch_threads'] = torch.get_num_threads()
  print(json.dumps(result))
  for key, path in PATHS.items():
    if key in result:
      results.record(FLAGS.results, 'latency', {'model': FLAGS.model, 'batch': 1, 'path': path,
                                                'threads': os.cpu_count()}, result[key])


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  app.run(main)
