"""vivit-jax: ViViT (Arnab et al., ICCV 2021) in JAX/Flax."""
import hashlib
import importlib.metadata
import importlib.util
import os
import platform
import site
import sys
import sysconfig

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext


class BuildFusedAttention(build_ext):
  """Builds the CPU attention kernel (`vivit/models/fused_attention.cc`) against the
  XLA FFI headers that jaxlib ships. Optional: without a C++ compiler, jaxlib or an
  x86-64 CPU, vivit falls back to its pure-JAX attention (and says so)."""

  def build_extensions(self):
    jaxlib = importlib.util.find_spec('jaxlib')
    if jaxlib is None or platform.machine().lower() not in ('x86_64', 'amd64'):
      print('vivit-jax: skipping the fused CPU attention kernel (needs jaxlib at build '
            'time and an x86-64 CPU); the pure-JAX attention will be used')
      self.extensions = []
      return
    include = os.path.join(os.path.dirname(jaxlib.origin), 'include')
    version = importlib.metadata.version('jaxlib')
    for extension in self.extensions:
      # -isystem: no warnings from XLA's headers.
      extension.extra_compile_args += ['-isystem', include]
      extension.define_macros.append(('VIVIT_JAXLIB_VERSION', f'"{version}"'))
      # fused_attention.py compares it with the .cc beside it: a stale library is not used.
      with open(extension.sources[0], 'rb') as f:
        source_hash = hashlib.sha256(f.read()).hexdigest()
      extension.define_macros.append(('VIVIT_SOURCE_HASH', f'"{source_hash}"'))
    super().build_extensions()

  def build_extension(self, extension):
    try:
      super().build_extension(extension)
    except Exception as error:  # pylint: disable=broad-except
      self.extensions.remove(extension)
      print(f'vivit-jax: could not build {extension.name} ({error}); the pure-JAX '
            'attention will be used')


fused_attention = Extension(
    'vivit.models._fused_attention',
    sources=['vivit/models/fused_attention.cc'],
    language='c++',
    extra_compile_args=['-O3', '-std=c++17', '-g0'],
)

# The floors: the oldest versions the test suite passes with (constraints-min.txt pins
# exactly these, and the hf extra's, and the slow tests/test_packaging.py runs the suite
# there; constraints.txt pins the newest, which CI tests). TensorFlow is added by
# `tensorflow_requirement`.
INSTALL_REQUIRES = [
    # Older jaxlibs log errors loading cached CPU executables (0.9, 0.10.0-1, on AVX-512
    # hosts) or break TensorFlow's trace annotations after a jax profiler trace (< 0.9).
    "jax>=0.10.2",
    "jaxlib>=0.10.2",  # vivit/models/fused_attention.py loads the kernel with it
    "flax>=0.12.2",  # older nn.remat passes jax.checkpoint concrete=, gone in jax 0.10
    "optax>=0.2.4",
    "orbax-checkpoint>=0.11.17",  # PyTreeRestore(partial_restore=); jax 0.9's layouts
    "ml_collections>=1.0.0",
    "numpy>=2.0.2",
    "absl-py>=1.4.0",
    "etils[epath]>=1.9.1",
    "tensorflow-datasets>=4.9.10",  # older ones fail with protobuf 7, which TF 2.21 takes
    # The dataset builders write ArrayRecord (tfds requires it on Linux only); its
    # wheels exist for Linux and Apple-silicon macOS only.
    'array_record>=0.5.1; sys_platform == "linux" or (sys_platform == "darwin" and '
    'platform_machine == "arm64")',
    "importlib_resources>=6.0.0",  # needed by tfds (etils.epath) but not declared by it
    "matplotlib>=3.8.4",
    "tensorboard>=2.20.0",
    "av>=17.1.0",  # PyAV: decoding videos (VideoFrame.rotation; set_display_rotation)
    "Pillow>=10.0.0",
    "tqdm>=4.68.0",  # older ones cut the views/s of the progress bar off on 80 columns
]
# TensorFlow (tf.data, TFDS, summaries) comes as two distributions of one `tensorflow`
# module, and a requirement cannot say "either": `tensorflow_requirement` picks one.
# 2.20 logs C++ lines past TF_CPP_MIN_LOG_LEVEL (a command's error is not one line).
TENSORFLOW_CPU = "tensorflow-cpu>=2.21.0"
TENSORFLOW = "tensorflow>=2.21.0"


def tensorflow_requirement() -> str:
  """TENSORFLOW where a full `tensorflow` is installed (requiring tensorflow-cpu beside
  it would install a second copy of the same module over it), else TENSORFLOW_CPU (no
  CUDA libraries) where tensorflow-cpu publishes wheels, Linux x86-64 and Windows x86-64,
  else TENSORFLOW (macOS, Linux aarch64). Decided where an sdist or a checkout is
  installed; a wheel keeps the choice of the machine that built it. pip's build
  isolation hides the target environment from `importlib.metadata`'s default search,
  so the environment's own site-packages are searched."""
  scheme = sysconfig.get_paths()
  paths = sys.path + [scheme["purelib"], scheme["platlib"], site.getusersitepackages()]
  if any(True for _ in importlib.metadata.distributions(name="tensorflow", path=paths)):
    return TENSORFLOW
  x86_64 = platform.machine().lower() in ("x86_64", "amd64")
  return TENSORFLOW_CPU if x86_64 and sys.platform in ("linux", "win32") else TENSORFLOW


# configs/ stays at the top of a clone and ships as the package `vivit.configs`, so that
# `--config synthetic_motion` also works from an installed package (vivit/cli.py).
config_packages = [
    "vivit." + directory.replace(os.sep, ".") for directory, _, _ in sorted(os.walk("configs"))
    if not any(part.startswith(("_", ".")) for part in directory.split(os.sep))]

setup(
    name="vivit-jax",
    version="0.1.0",
    description="ViViT video transformers in JAX/Flax: all four variants, "
                "scenic and HuggingFace checkpoint conversion, training and evaluation.",
    license="Apache-2.0",
    classifiers=["License :: OSI Approved :: Apache Software License"],
    packages=find_packages(include=["vivit", "vivit.*"]) + config_packages,
    package_dir={"vivit.configs": "configs"},
    python_requires=">=3.11",
    ext_modules=[fused_attention],
    cmdclass={"build_ext": BuildFusedAttention},
    install_requires=INSTALL_REQUIRES + [tensorflow_requirement()],
    entry_points={
        "console_scripts": [
            "vivit-train = vivit.train:cli",
            "vivit-evaluate = vivit.evaluate:cli",
            "vivit-convert = vivit.convert.__main__:main",
            "vivit-predict = vivit.predict:main",
            "vivit-prepare = vivit.prepare:main",
            "vivit-launch = vivit.launch:main",
            "vivit-benchmark = vivit.benchmark:main",
            "vivit-export = vivit.export:main",
        ],
    },
    extras_require={
        # JAX's accelerator builds (plain `jax` runs on the CPU only): NVIDIA GPUs with
        # CUDA 12 or CUDA 13 (wheels that bundle CUDA and cuDNN), or Cloud TPU.
        "cuda12": ["jax[cuda12]"],
        "cuda13": ["jax[cuda13]"],
        "tpu": ["jax[tpu]"],
        # Reading/writing HuggingFace ViViT checkpoints and Hub ids. Each extra's modules
        # are imported inside functions only, and `vivit.cli.EXTRAS` names the extra
        # when one is missing (tests/test_packaging.py checks both).
        # torch only for pytorch_model.bin: torch.load(weights_only=True) is safe from 2.6.
        "hf": ["transformers>=4.48.0", "safetensors>=0.4.5", "huggingface_hub>=0.27.0",
               "torch>=2.6"],
        # `prepare --beam`: TFDS's Apache Beam generation (Dataflow, Flink, Spark).
        "beam": ["apache-beam>=2.77.0"],
        # `training.loggers` 'wandb' and 'mlflow' (vivit/loggers.py). mlflow-skinny logs
        # to a tracking server or a file store; the full `mlflow` (its UI, database
        # stores) also provides the module.
        "wandb": ["wandb>=0.31.0"],
        "mlflow": ["mlflow-skinny>=3.18.0"],
        # torch==2.13.0 (>= 2.6, for torch.load(weights_only=True)) is the CPU build; an
        # unpinned torch pulls a multi-GB CUDA build.
        "test": ["pytest>=9.0.3", "pytest-xdist>=3.8.0", "hypothesis>=6.155.2",
                 "psutil>=7.2.2", "transformers>=4.48.0", "safetensors>=0.4.5",
                 "huggingface_hub>=0.27.0", "torch==2.13.0", "apache-beam>=2.77.0",
                 "wandb>=0.31.0", "mlflow-skinny>=3.18.0"],
    },
)
