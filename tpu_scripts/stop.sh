#!/usr/bin/env bash
# Stops the run that launch.sh started, on every worker (SIGTERM to the recorded process id).
# Checkpoints already written stay; launching again resumes from the newest one.
#
#   tpu_scripts/stop.sh [--config=FILE] [--dry-run]
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

parse_common_flags "$@"
((${#ARGS[@]} == 0)) || die "unexpected arguments: ${ARGS[*]}"
require TPU_NAME ZONE PROJECT

pid="$(remote_path "$PID_FILE")"
remote="if [ -f $pid ] && kill -0 \"\$(cat $pid)\" 2>/dev/null;"
remote+=" then kill \"\$(cat $pid)\"; echo \"\$(hostname): stopped safejax train (pid \$(cat $pid))\";"
remote+=" else echo \"\$(hostname): safejax train not running\"; fi"
remote+="; rm -f $pid"
on_workers all "$remote"
