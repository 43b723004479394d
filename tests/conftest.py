import os

# Tests run on the CPU even where an accelerator is present, and keep TensorFlow quiet.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
