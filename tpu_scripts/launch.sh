#!/usr/bin/env bash
# Starts `safejax train` on every worker, the same command on each (one process per host; they
# find each other through jax.distributed, which initialises itself from the TPU environment).
# Training runs detached from the ssh session and appends to LOG_FILE on each worker.
#
#   tpu_scripts/launch.sh [--config=FILE] [--dry-run] GIN_FLAGS...
#
# GIN_FLAGS are safejax's --gin_file=PATH, --gin.NAME=VALUE and --gin_search_paths=A,B flags,
# passed on unchanged; quote gin strings for your shell as usual, e.g.
#   --gin.TEXT_FILES="'gs://my-bucket/corpus/*.jsonl'"
# Relative gin files are looked up in the checkout on the workers, then in its gin/ folder.
# MODEL_DIR is bound here: the MODEL_DIR setting, else gs://$BUCKET/runs/$RUN_NAME. Input data and
# the model directory must be on GCS: every worker reads its shard of the input and writes its
# shards of each checkpoint there. Launching the same run again resumes from its newest checkpoint.
# Refuses to start on a worker where a launched run is still running (see stop.sh).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_flags "$@"
require TPU_NAME ZONE PROJECT
((${#ARGS[@]})) || die "give the run's gin flags, e.g. --gin_file=models/smollm2_135m.gin" \
  "--gin_file=runs/pretrain_text.gin --gin.TEXT_FILES=\"'gs://my-bucket/corpus/*.jsonl'\""
for arg in "${ARGS[@]}"; do
  case "$arg" in
    --gin.MODEL_DIR=*) die "set MODEL_DIR (or BUCKET and RUN_NAME) instead of passing --gin.MODEL_DIR" ;;
    --gin_file=* | --gin.*=* | --gin_search_paths=*) ;;
    *) die "'$arg' is not a gin flag (--gin_file=PATH, --gin.NAME=VALUE or --gin_search_paths=A,B)" ;;
  esac
done
if [[ -z "${MODEL_DIR:-}" ]]; then
  require BUCKET RUN_NAME
  MODEL_DIR="gs://$BUCKET/runs/$RUN_NAME"
fi
[[ "$MODEL_DIR" == gs://* ]] || die "MODEL_DIR must be a gs:// path all workers share, not '$MODEL_DIR'"
[[ "$MODEL_DIR" != *[\'\\]* ]] || die "MODEL_DIR must not contain quotes or backslashes: '$MODEL_DIR'"

code="$(remote_path "$REMOTE_DIR")"
log="$(remote_path "$LOG_FILE")"
pid="$(remote_path "$PID_FILE")"
train="$(remote_path "$VENV_DIR")/bin/safejax $(join_quoted train "${ARGS[@]}" --gin.MODEL_DIR="'$MODEL_DIR'")"

# Run by each worker's shell: refuse if our last launch is alive, else start detached.
remote="set -e; cd $code"
remote+="; if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null; then"
remote+=" echo \"\$(hostname): safejax train is already running (pid \$(cat $pid))\" >&2; exit 1; fi"
remote+="; nohup $train >> $log 2>&1 < /dev/null & echo \$! > $pid"
remote+="; echo \"\$(hostname): started safejax train (pid \$!), logging to $log\""
on_workers all "$remote"
