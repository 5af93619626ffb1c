#!/usr/bin/env bash
# Installs safejax on every worker: the code, a Python venv, and
# `pip install -r requirements-lock.txt -e .[tpu]` (the locked stack plus jax's TPU build).
#
#   tpu_scripts/setup.sh [--config=FILE] [--dry-run]
#
# The code is the local checkout's HEAD commit (uncommitted changes are not copied), packed with
# git archive and copied to every worker; with REPO_URL set, every worker clones REPO_REF (a
# branch or tag) instead. PYTHON (python3.11) is installed with apt where the image lacks it.
# Re-running replaces the code and updates the venv in place.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_flags "$@"
((${#ARGS[@]} == 0)) || die "unexpected arguments: ${ARGS[*]}"
require TPU_NAME ZONE PROJECT

code="$(remote_path "$REMOTE_DIR")"
venv="$(remote_path "$VENV_DIR")"
python="$(shell_quote "$PYTHON")"

# apt waits for the image's boot-time upgrades to release their lock.
apt="sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600"
install_python="if ! $python -c 'import ensurepip, venv' >/dev/null 2>&1;"
install_python+=" then $apt update -qq && $apt install -y -qq $python $(shell_quote "$PYTHON-venv"); fi"
# Run by each worker's shell, from the ssh user's home directory.
steps=("set -e" "$install_python" "rm -rf $code")
if [[ -n "${REPO_URL:-}" ]]; then
  steps+=("git clone --quiet --depth=1 $(join_quoted --branch="$REPO_REF" "$REPO_URL") $code")
else
  archive="${TMPDIR:-/tmp}/safejax-$TPU_NAME.tar.gz"
  if [[ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no)" ]]; then
    echo "warning: uncommitted changes in $REPO_ROOT are not copied; HEAD is" >&2
  fi
  run git -C "$REPO_ROOT" archive --format=tar.gz --output="$archive" HEAD
  run gcloud compute tpus tpu-vm scp "$archive" "$TPU_NAME:safejax.tar.gz" --worker=all \
    --zone="$ZONE" --project="$PROJECT"
  run rm -f "$archive"
  steps+=("mkdir -p $code" "tar -xzf safejax.tar.gz -C $code" "rm safejax.tar.gz")
fi
steps+=(
  "[ -x $venv/bin/python ] || $python -m venv $venv"
  "$venv/bin/pip install --quiet --upgrade pip"
  "cd $code"
  "$venv/bin/pip install --quiet -r requirements-lock.txt -e '.[tpu]'"
  "$venv/bin/python -c 'import jax, safejax.train'"
  "echo \"safejax installed on \$(hostname)\""
)

remote=""
for step in "${steps[@]}"; do
  remote+="${remote:+; }$step"
done
on_workers all "$remote"
