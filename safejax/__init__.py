"""safejax: safety pretraining in JAX (score, route, rephrase, refuse, tag; train; SafeBeam; evaluate)."""

import os as _os

# TensorFlow (seqio, tfds) shares the process with JAX: keep its C++ logging quiet.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# XLA:CPU gives YNNPACK each matmul on its own by default, with layout copies and elementwise
# passes around it; the `dot` fusion type lets YNNPACK fuse the matmuls with their neighbours. One
# train step gains 9-16 % tokens/s with it on this project's shapes (README "Speed";
# `benchmarks/bench_train.py --contenders jax,jax_xla_default`). An xla_cpu_* flag: GPU and TPU
# ignore it. It takes effect when safejax is imported before JAX starts its CPU backend; a value of
# your own for the same flag in XLA_FLAGS wins.
CPU_XLA_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot",)
for _flag in CPU_XLA_FLAGS:
  if _flag.split("=")[0] not in _os.environ.get("XLA_FLAGS", ""):
    _os.environ["XLA_FLAGS"] = f"{_os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

__version__ = "0.1.0"


class UserError(ValueError):
  """A problem with what the user gave (a configuration value, a path, an input record), said in
  one line that names it. The `safejax` command prints that line alone (with -v, the traceback
  too): the user needs to fix their input, not read the stack."""
