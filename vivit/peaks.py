"""What a benchmark measures against: a device's peak matmul rate (the vendors'
figures, by `device.device_kind`), model FLOPs utilisation, and this process's peak
host memory. Standard library only: `vivit.benchmark_hf`'s process (torch, no JAX)
reads it too."""
import re
import resource
from typing import NamedTuple, Optional


class Peak(NamedTuple):
  """A chip's dense peak in TFLOP/s, by the model's compute dtype."""
  name: str
  bfloat16: float
  # float32 matmuls as JAX computes them by default (precision DEFAULT): TF32 on
  # NVIDIA Ampere and newer, one bfloat16 pass on TPU.
  float32: float


# (pattern of the lower-cased device_kind, peak), the first match counts. NVIDIA's
# datasheets give tensor-core rates "with sparsity"; these are the dense rates, half
# of those: A100 (SXM4 and PCIe alike): BF16 312, TF32 156; H100 SXM: BF16 1,979*,
# TF32 989*; H100 PCIe: 1,513*, 756*; H100 NVL: 1,671*, 835*; H200 SXM and GH200 as
# H100 SXM, H200 NVL as H100 NVL; L4: BF16 242*, TF32 120*. Google Cloud's TPU pages
# (peak compute per chip, bf16): v4 275, v5e 197, v5p 459, v6e 918.
PEAKS = (
    (r'\bh100\b.*\bnvl\b', Peak('H100 NVL', 835.5, 417.5)),
    (r'\bh100\b.*\bpcie\b', Peak('H100 PCIe', 756.5, 378.0)),
    (r'\bh100\b', Peak('H100 SXM', 989.5, 494.5)),
    (r'\bh200\b.*\bnvl\b', Peak('H200 NVL', 835.5, 417.5)),
    (r'\bh200\b', Peak('H200 SXM', 989.5, 494.5)),
    (r'\bgh200\b', Peak('GH200', 989.5, 494.5)),
    (r'\ba100\b.*\bpcie\b', Peak('A100 PCIe', 312.0, 156.0)),
    (r'\ba100\b', Peak('A100 SXM', 312.0, 156.0)),
    (r'\bl4\b', Peak('L4', 121.0, 60.0)),
    (r'^tpu v4$', Peak('TPU v4', 275.0, 275.0)),
    (r'^tpu v5 ?(lite|e)$', Peak('TPU v5e', 197.0, 197.0)),
    (r'^tpu v5p?$', Peak('TPU v5p', 459.0, 459.0)),
    (r'^tpu v6 ?(lite|e)$', Peak('TPU v6e', 918.0, 918.0)),
)


def device_peak(device_kind: str) -> Optional[Peak]:
  """The peak of a `jax.Device.device_kind` ('NVIDIA H100 80GB HBM3', 'TPU v5 lite'),
  None for a chip the table does not know (any CPU)."""
  kind = ' '.join(device_kind.lower().split())
  for pattern, peak in PEAKS:
    if re.search(pattern, kind):
      return peak
  return None


def utilisation(flops_per_clip: float, clips_per_second: float,
                peak_tflops: Optional[float]) -> Optional[float]:
  """Model FLOPs utilisation: the FLOP/s achieved over the peak (None without one)."""
  if not peak_tflops:
    return None
  return flops_per_clip * clips_per_second / (peak_tflops * 1e12)


def host_peak_bytes() -> int:
  """This process's peak resident memory since `reset_host_peak` (Linux's VmHWM;
  elsewhere since the process started)."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_host_peak() -> None:
  """Starts `host_peak_bytes` afresh from the memory resident now (Linux), so that
  setup and compilation do not count."""
  try:
    with open('/proc/self/clear_refs', 'w') as f:
      f.write('5')
  except OSError:
    pass
