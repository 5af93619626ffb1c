"""Importing safejax sets its XLA:CPU flags before JAX starts a backend, and leaves a user's own value alone."""

import os
import subprocess
import sys

import safejax

SHOW = "import safejax, os, jax; jax.devices(); print(os.environ['XLA_FLAGS'])"


def _flags_after_import(xla_flags: str | None) -> str:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if xla_flags is not None:
    env["XLA_FLAGS"] = xla_flags
  out = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True, check=True)
  return out.stdout.strip().splitlines()[-1]


def test_importing_safejax_adds_its_cpu_flags_to_xla_flags():
  assert _flags_after_import(None) == " ".join(safejax.CPU_XLA_FLAGS)
  assert _flags_after_import("--xla_force_host_platform_device_count=2").split() == [
      "--xla_force_host_platform_device_count=2", *safejax.CPU_XLA_FLAGS]


def test_a_value_of_the_users_own_wins():
  own = "--xla_cpu_experimental_ynn_fusion_type=-dot"
  assert _flags_after_import(own) == own
