"""Checkpoint conversion: any checkpoint format read as a ViViT, HuggingFace
transformers and scenic <-> vivit-jax, and initialisation from 2-D ViTs."""
from vivit.convert.read import guess_format, read_checkpoint
from vivit.convert.resize import resize_params
from vivit.convert.scenic import from_scenic
from vivit.convert.vit import from_vit
from vivit.convert.transformers import (from_hf_pixel_values, from_transformers,
                                        to_hf_pixel_values, to_transformers)
