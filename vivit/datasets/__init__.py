"""Video datasets. Importing this package registers the TFDS builders of every
dataset it can prepare (`tfds.builder('kinetics400', data_dir=...)`)."""
from vivit.data import epic_kitchens, kinetics, moments_in_time, ssv2, video_folder  # noqa: F401
from vivit.data.synthetic import SyntheticMotion  # noqa: F401
