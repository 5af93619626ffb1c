#!/usr/bin/env bash
# Deletes the TPU VM slice and everything on its disks (checkpoints and logs written to GCS stay).
#
#   tpu_scripts/teardown.sh [--yes] [--config=FILE] [--dry-run]
#
# gcloud asks for confirmation unless --yes is given.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_flags "$@"
quiet=()
for arg in "${ARGS[@]}"; do
  case "$arg" in
    --yes) quiet=(--quiet) ;;
    *) die "unexpected argument: $arg" ;;
  esac
done
require TPU_NAME ZONE PROJECT

tpu_vm delete "${quiet[@]}"
