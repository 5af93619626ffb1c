#!/usr/bin/env bash
# Shows the slice's state and health, whether the launched run is alive, and the end of its log.
#
#   tpu_scripts/watch.sh [--follow] [--worker=W] [--lines=N] [--config=FILE] [--dry-run]
#
# --worker: 0 (default; process 0 shows the progress bar and metrics), another index, a range such
# as 1-3, or all. --lines: how much of each log to show (default 50). --follow keeps printing the
# log as it grows (tail -F) until interrupted; the run goes on.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_flags "$@"
worker=0
lines=50
follow=()
for arg in "${ARGS[@]}"; do
  case "$arg" in
    --follow) follow=(-F) ;;
    --worker=*) worker="${arg#--worker=}" ;;
    --lines=*) lines="${arg#--lines=}" ;;
    *) die "unexpected argument: $arg" ;;
  esac
done
workers_pattern='^(all|[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*)$'
[[ "$worker" =~ $workers_pattern ]] || die "--worker must be all, an index, a range or a list, not '$worker'"
[[ "$lines" =~ ^[0-9]+$ ]] || die "--lines must be a number, not '$lines'"
require TPU_NAME ZONE PROJECT

log="$(remote_path "$LOG_FILE")"
pid="$(remote_path "$PID_FILE")"
remote="if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null;"
remote+=" then echo \"== \$(hostname): safejax train running (pid \$(cat $pid))\";"
remote+=" else echo \"== \$(hostname): safejax train not running\"; fi"
remote+="; $(join_quoted tail -n "$lines" "${follow[@]}") $log"

tpu_vm describe --format='value(state,health)'
on_workers "$worker" "$remote"
