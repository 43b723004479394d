"""tf.data + TFDS input pipelines (host CPU only; never imports the model or JAX). The
imports below only check that the [train] and [tf] extras are installed."""

try:  # the [train] and [tf] extras; the core install is models and weights only
    import optax  # noqa: F401
    import tensorflow  # noqa: F401
    import tensorflow_datasets  # noqa: F401
except ImportError as missing:
    raise ImportError(f"training needs {missing.name}: pip install 'resnext_jax[train,tf]' "
                      "(where TensorFlow is installed already, as in Colab: "
                      "'resnext_jax[train]')") from missing


from resnext_jax.data.pipeline import EvalData, TrainData
from resnext_jax.data.preprocess import Preprocess
from resnext_jax.data.sources import DatasetNotFoundError, Source, open_source
from resnext_jax.data.synthetic import SyntheticData

__all__ = ["DatasetNotFoundError", "EvalData", "Preprocess", "Source", "SyntheticData",
           "TrainData", "open_source"]
