#!/usr/bin/env bash
# Creates the TPU VM slice (every worker of a pod slice comes up with it).
#
#   tpu_scripts/create.sh [--config=FILE] [--dry-run]
#
# Needs TPU_NAME, ZONE, PROJECT, ACCELERATOR_TYPE (e.g. v4-32, v5litepod-16) and RUNTIME_VERSION
# (the TPU software image, e.g. tpu-ubuntu2204-base for v4, v2-alpha-tpuv5-lite for v5e).
# PROVISIONING=spot or preemptible asks for cheaper, interruptible capacity (default: standard).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_flags "$@"
((${#ARGS[@]} == 0)) || die "unexpected arguments: ${ARGS[*]}"
require TPU_NAME ZONE PROJECT ACCELERATOR_TYPE RUNTIME_VERSION

case "$PROVISIONING" in
  standard) provisioning_flags=() ;;
  spot) provisioning_flags=(--spot) ;;
  preemptible) provisioning_flags=(--preemptible) ;;
  *) die "PROVISIONING must be standard, spot or preemptible, not '$PROVISIONING'" ;;
esac

tpu_vm create --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" "${provisioning_flags[@]}"
