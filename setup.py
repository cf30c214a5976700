"""vivit-jax: ViViT (Arnab et al., ICCV 2021) in JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="vivit-jax",
    version="0.1.0",
    description="ViViT video transformers in JAX/Flax: all four variants, "
                "scenic and HuggingFace checkpoint conversion, training and evaluation.",
    packages=find_packages(include=["vivit", "vivit.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10",
        "flax",
        "optax",
        "orbax-checkpoint",
        "ml_collections",
        "numpy",
        "tensorflow-cpu",
        "tensorflow-datasets",
        "importlib_resources",  # needed by tfds (etils.epath) but not declared by it
        "matplotlib",
        "tensorboard",
        "av",  # PyAV: decoding videos in `python -m vivit.data.prepare`
    ],
    entry_points={
        "console_scripts": [
            "vivit-train = vivit.train:cli",
            "vivit-evaluate = vivit.evaluate:cli",
            "vivit-convert = vivit.convert.__main__:main",
            "vivit-predict = vivit.predict:main",
            "vivit-prepare = vivit.data.prepare:main",
            "vivit-launch = vivit.launch:main",
        ],
    },
    extras_require={
        # Reading/writing HuggingFace ViViT checkpoints.
        "hf": ["transformers", "safetensors"],
        # `prepare --beam`: TFDS's Apache Beam generation (Dataflow, Flink, Spark).
        "beam": ["apache-beam"],
        # torch==2.13.0 is the CPU build; an unpinned torch pulls a multi-GB CUDA build.
        "test": ["pytest", "hypothesis", "psutil", "transformers", "safetensors", "torch==2.13.0",
                 "apache-beam"],
    },
)
