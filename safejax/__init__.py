"""safejax: safety pretraining in JAX (score, route, rephrase, refuse, tag; train; SafeBeam; evaluate)."""

import os as _os

# TensorFlow (seqio, tfds) shares the process with JAX: keep its C++ logging quiet.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
