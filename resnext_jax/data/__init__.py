"""tf.data + TFDS input pipelines (host CPU only; never imports the model or JAX)."""

from resnext_jax.data.pipeline import EvalData, TrainData
from resnext_jax.data.preprocess import Preprocess
from resnext_jax.data.sources import DatasetNotFoundError, Source, open_source
from resnext_jax.data.synthetic import SyntheticData

__all__ = ["DatasetNotFoundError", "EvalData", "Preprocess", "Source", "SyntheticData",
           "TrainData", "open_source"]
