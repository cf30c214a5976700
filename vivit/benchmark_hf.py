"""HF transformers' ViViT timed as `vivit.benchmark` times ours, in a process of its
own that imports no JAX (its peak memory is its own; JAX holds no GPU memory in it):

  python -m vivit.benchmark_hf '{"hf_dir": ..., "pass": "train", ...}'

prints one JSON line. `hf_dir` holds `VivitForVideoClassification` weights and the
clips as `pixel_values.npy` (`vivit.benchmark.write_hf_inputs`). Attention is torch's
scaled_dot_product_attention (SDPA); bfloat16 is torch.autocast over float32
weights, as ours computes in bfloat16 over float32 params; the train step clips the
gradient's global norm to 1 and takes a momentum-SGD step.
"""
import json
import os
import statistics
import sys
import time

import numpy as np

from vivit.peaks import host_peak_bytes, reset_host_peak


def cuda_available() -> bool:
  """Whether torch is installed and finds a CUDA GPU."""
  try:
    import torch
  except ImportError:
    return False
  return torch.cuda.is_available()


def measure(spec) -> dict:
  """{seconds (median per call), peak_bytes, device, attention, versions} of one
  pass (`spec['pass']`: 'forward' or 'train') of the model in `spec['hf_dir']`."""
  import torch
  import transformers
  from transformers import VivitForVideoClassification
  device = torch.device('cuda' if spec['device'] == 'cuda' else 'cpu')
  if device.type == 'cpu':
    torch.set_num_threads(os.cpu_count())
  model = VivitForVideoClassification.from_pretrained(
      spec['hf_dir'], attn_implementation='sdpa').to(device)
  pixels = torch.tensor(np.load(os.path.join(spec['hf_dir'], 'pixel_values.npy'))).to(device)
  labels = torch.zeros((pixels.shape[0],), dtype=torch.long, device=device)
  autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16,
                                    enabled=spec['dtype'] == 'bfloat16')
  if spec['pass'] == 'forward':
    model.eval()

    def run():
      with torch.no_grad(), autocast():
        model(pixel_values=pixels)
  else:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run():
      optimizer.zero_grad()
      with autocast():
        loss = model(pixel_values=pixels, labels=labels).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      optimizer.step()
  synchronise = torch.cuda.synchronize if device.type == 'cuda' else lambda: None
  if device.type == 'cuda':
    torch.cuda.reset_peak_memory_stats()
  reset_host_peak()
  run()  # warm-up
  synchronise()
  times = []
  for _ in range(spec['repeats']):
    start = time.perf_counter()
    run()
    synchronise()
    times.append(time.perf_counter() - start)
  peak = (torch.cuda.max_memory_allocated() if device.type == 'cuda' else host_peak_bytes())
  return {'seconds': statistics.median(times), 'peak_bytes': int(peak),
          'device': (torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'),
          'attention': model.config._attn_implementation,  # pylint: disable=protected-access
          'torch': torch.__version__, 'transformers': transformers.__version__}


if __name__ == '__main__':
  print(json.dumps(measure(json.loads(sys.argv[1]))))
