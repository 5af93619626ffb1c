# shellcheck shell=bash
# Sourced by every tpu_scripts/*.sh: configuration, checks and the command runner.
#
# Configuration comes from environment variables, optionally read from a file given with
# --config=FILE (or SAFEJAX_TPU_CONFIG=FILE); variables already set in the environment win over
# the file, so `ZONE=... tpu_scripts/create.sh --config=tpu.env` overrides one value.
# With --dry-run (or DRY_RUN=1) every command is printed, one copy-pastable line each, instead of
# being run.

set -euo pipefail

if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] < 404)); then
  echo "tpu_scripts need bash >= 4.4 (this is $BASH_VERSION; on macOS: brew install bash)" >&2
  exit 1
fi

# Used by the scripts that source this file.
# shellcheck disable=SC2034
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Every setting a config file may hold.
CONFIG_VARS=(TPU_NAME ZONE PROJECT ACCELERATOR_TYPE RUNTIME_VERSION PROVISIONING BUCKET RUN_NAME
  MODEL_DIR REPO_URL REPO_REF PYTHON REMOTE_DIR VENV_DIR LOG_FILE)

die() {
  printf '%s: %s\n' "$(basename "$0")" "$*" >&2
  exit 1
}

# Prints the script's header comment (from line 2 to the first line that is not a comment).
usage() {
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p;}' "$0"
}

# Reads FILE (if given) without overriding variables already set in the environment.
load_config() {
  local file="$1" name
  local -a kept=()
  for name in "${CONFIG_VARS[@]}"; do
    if [[ -n "${!name+set}" ]]; then
      kept+=("$name=${!name}")
    fi
  done
  if [[ -n "$file" ]]; then
    [[ -f "$file" ]] || die "config file $file does not exist (see tpu_scripts/tpu.env.example)"
    # shellcheck source=/dev/null
    source "$file"
  fi
  local pair
  for pair in "${kept[@]}"; do
    printf -v "${pair%%=*}" '%s' "${pair#*=}"
  done
  # Remote paths are relative to the home directory of the ssh user on each worker.
  PROVISIONING="${PROVISIONING:-standard}"
  REPO_REF="${REPO_REF:-main}"
  PYTHON="${PYTHON:-python3.11}"
  REMOTE_DIR="${REMOTE_DIR:-safejax}"
  VENV_DIR="${VENV_DIR:-safejax-venv}"
  LOG_FILE="${LOG_FILE:-safejax-train.log}"
  # shellcheck disable=SC2034  # used by the scripts that source this file
  PID_FILE="${LOG_FILE%.log}.pid"
}

# Handles the flags every script takes (--dry-run, --config=FILE, --help) and loads the
# configuration; the script's own arguments are left in ARGS.
parse_common_flags() {
  local config="${SAFEJAX_TPU_CONFIG:-}"
  DRY_RUN="${DRY_RUN:-0}"
  ARGS=()
  while (($#)); do
    case "$1" in
      --dry-run) DRY_RUN=1 ;;
      --config=*) config="${1#--config=}" ;;
      --config)
        (($# > 1)) || die "--config needs a file"
        config="$2"
        shift
        ;;
      -h | --help)
        usage
        exit 0
        ;;
      *) ARGS+=("$1") ;;
    esac
    shift
  done
  [[ "$DRY_RUN" == 0 || "$DRY_RUN" == 1 ]] || die "DRY_RUN must be 0 or 1, not '$DRY_RUN'"
  load_config "$config"
}

# Fails naming every listed variable that is empty.
require() {
  local name
  local -a missing=()
  for name in "$@"; do
    [[ -n "${!name:-}" ]] || missing+=("$name")
  done
  if ((${#missing[@]})); then
    die "set ${missing[*]} (environment variables or --config=FILE, see tpu_scripts/tpu.env.example)"
  fi
}

# Quotes one word for a POSIX shell, as a person would: bare when safe, else '...', else "..." when
# the word holds single quotes but nothing double quotes would expand, else '...' with '\'' escapes.
shell_quote() {
  local word="$1"
  if [[ "$word" =~ ^[A-Za-z0-9_./:@%+,=-]+$ ]]; then
    printf '%s' "$word"
  elif [[ "$word" != *"'"* ]]; then
    printf "'%s'" "$word"
  elif [[ "$word" != *[\"\$\`\\!]* ]]; then
    printf '"%s"' "$word"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

# Quotes words and joins them with spaces; in --flag=value words only the value is quoted.
join_quoted() {
  local word line=""
  for word in "$@"; do
    if [[ "$word" =~ ^(--[A-Za-z0-9_.-]+=)(.*)$ ]]; then
      line+="${line:+ }${BASH_REMATCH[1]}$(shell_quote "${BASH_REMATCH[2]}")"
    else
      line+="${line:+ }$(shell_quote "$word")"
    fi
  done
  printf '%s' "$line"
}

# Runs a command, or with DRY_RUN=1 prints it instead (stdout, one line). Real runs echo the
# command to stderr first so the log shows what was done.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%s\n' "$(join_quoted "$@")"
  else
    printf '+ %s\n' "$(join_quoted "$@")" >&2
    "$@"
  fi
}

# A path on a worker, quoted for its shell: relative paths are taken from the home directory.
remote_path() {
  if [[ "$1" == /* ]]; then
    shell_quote "$1"
  else
    # shellcheck disable=SC2088  # the tilde is for the worker's shell to expand
    printf '~/%s' "$(shell_quote "$1")"
  fi
}

# gcloud compute tpus tpu-vm SUBCOMMAND on the configured TPU, with zone and project.
tpu_vm() {
  local subcommand="$1"
  shift
  run gcloud compute tpus tpu-vm "$subcommand" "$TPU_NAME" --zone="$ZONE" --project="$PROJECT" "$@"
}

# Runs a shell command line on workers WORKERS (all, or indices such as 0 or 1-3) over ssh.
on_workers() {
  tpu_vm ssh --worker="$1" --command="$2"
}
