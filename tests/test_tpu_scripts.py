"""tpu_scripts/: the exact gcloud commands each script prints in dry-run mode, the worker-side
commands run for real on fake workers (a stand-in `gcloud` that runs `ssh --command` locally),
gcloud's own argument parser over every printed command, and shellcheck."""

import json
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tpu_scripts"
SLICE = {"TPU_NAME": "safejax-v4-32", "ZONE": "us-central2-b", "PROJECT": "my-project"}
TPU = "gcloud compute tpus tpu-vm {} safejax-v4-32 --zone=us-central2-b --project=my-project"
CHECK_RUNNING = ("if [ -f ~/safejax-train.pid ] && kill -0 \"$(cat ~/safejax-train.pid)\" 2>/dev/null;")


def run_script(name: str, *args: str, env: dict[str, str] | None = None, check: bool = True,
               path: str | None = None) -> subprocess.CompletedProcess:
  """Runs tpu_scripts/<name> with only the given settings (none leak in from the outer shell)."""
  full_env = {"PATH": path or os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
  result = subprocess.run(["bash", str(SCRIPTS / name), *args], env=full_env, capture_output=True, text=True,
                          timeout=60)
  if check and result.returncode:
    raise AssertionError(f"{name} failed ({result.returncode}):\n{result.stderr}")
  return result


def dry_run(name: str, *args: str, **settings: str) -> list[str]:
  return run_script(name, "--dry-run", *args, env={**SLICE, **settings}).stdout.splitlines()


def single_quoted(text: str) -> str:
  """text in single quotes, each ' written '\\'' (the scripts' quoting of the worker command)."""
  return "'" + text.replace("'", "'\\''") + "'"


def ssh_command(line: str) -> str:
  """The --command value of a printed `gcloud ... ssh` line, as the worker's shell receives it."""
  (command,) = [a[len("--command="):] for a in shlex.split(line) if a.startswith("--command=")]
  return command


# --------------------------------------------------------------------------------------------
# Dry runs: the exact commands


@pytest.mark.parametrize("provisioning, flag",
                         [("standard", ""), ("spot", " --spot"), ("preemptible", " --preemptible")])
def test_create(provisioning, flag):
  lines = dry_run("create.sh", ACCELERATOR_TYPE="v4-32", RUNTIME_VERSION="tpu-ubuntu2204-base",
                  PROVISIONING=provisioning)
  assert lines == [TPU.format("create") + " --accelerator-type=v4-32 --version=tpu-ubuntu2204-base" + flag]


def test_missing_and_bad_settings_fail_before_any_command():
  result = run_script("create.sh", "--dry-run", env={"TPU_NAME": "t"}, check=False)
  assert result.returncode == 1 and result.stdout == ""
  assert "set ZONE PROJECT ACCELERATOR_TYPE RUNTIME_VERSION" in result.stderr
  result = run_script("create.sh", "--dry-run", env={**SLICE, "ACCELERATOR_TYPE": "v4-8", "RUNTIME_VERSION": "x",
                                                     "PROVISIONING": "cheap"}, check=False)
  assert result.returncode == 1 and "PROVISIONING must be standard, spot or preemptible, not 'cheap'" in result.stderr
  result = run_script("create.sh", "--dry-run", "extra", env=SLICE, check=False)
  assert result.returncode == 1 and "unexpected arguments: extra" in result.stderr
  result = run_script("teardown.sh", env={**SLICE, "DRY_RUN": "yes"}, check=False)
  assert result.returncode == 1 and "DRY_RUN must be 0 or 1" in result.stderr


def test_config_file_and_environment(tmp_path):
  config = tmp_path / "tpu.env"
  config.write_text("TPU_NAME=from-file\nZONE=europe-west4-a\nPROJECT=file-project\n")
  expected = "gcloud compute tpus tpu-vm delete from-file --zone={} --project=file-project"
  for args, env in [(["--config", str(config)], {}), ([f"--config={config}"], {}),
                    ([], {"SAFEJAX_TPU_CONFIG": str(config)})]:
    result = run_script("teardown.sh", "--dry-run", *args, env=env)
    assert result.stdout.splitlines() == [expected.format("europe-west4-a")]
  # The environment wins over the file.
  result = run_script("teardown.sh", "--dry-run", f"--config={config}", env={"ZONE": "us-east5-a"})
  assert result.stdout.splitlines() == [expected.format("us-east5-a")]
  result = run_script("teardown.sh", "--dry-run", "--config=/nonexistent/tpu.env", check=False)
  assert result.returncode == 1 and "config file /nonexistent/tpu.env does not exist" in result.stderr


def test_example_config_is_complete():
  result = run_script("create.sh", "--dry-run", f"--config={SCRIPTS / 'tpu.env.example'}")
  assert result.stdout.splitlines() == [
      "gcloud compute tpus tpu-vm create safejax-v4-32 --zone=us-central2-b --project=my-gcp-project "
      "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --spot"]


def test_teardown():
  assert dry_run("teardown.sh") == [TPU.format("delete")]
  assert dry_run("teardown.sh", "--yes") == [TPU.format("delete") + " --quiet"]


APT = "sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600"
INSTALL_PYTHON = (f"if ! python3.11 -c 'import ensurepip, venv' >/dev/null 2>&1; then {APT} update -qq && "
                  f"{APT} install -y -qq python3.11 python3.11-venv; fi")
INSTALL = ["[ -x ~/safejax-venv/bin/python ] || python3.11 -m venv ~/safejax-venv",
           "~/safejax-venv/bin/pip install --quiet --upgrade pip",
           "cd ~/safejax",
           "~/safejax-venv/bin/pip install --quiet -r requirements-lock.txt -e '.[tpu]'",
           "~/safejax-venv/bin/python -c 'import jax, safejax.train'",
           'echo "safejax installed on $(hostname)"']


def test_setup_copies_head_to_every_worker(tmp_path):
  lines = run_script("setup.sh", "--dry-run", env={**SLICE, "TMPDIR": str(tmp_path)}).stdout.splitlines()
  archive = tmp_path / "safejax-safejax-v4-32.tar.gz"
  assert lines[:3] == [
      f"git -C {REPO} archive --format=tar.gz --output={archive} HEAD",
      f"gcloud compute tpus tpu-vm scp {archive} safejax-v4-32:safejax.tar.gz --worker=all "
      "--zone=us-central2-b --project=my-project",
      f"rm -f {archive}"]
  assert len(lines) == 4 and lines[3].startswith(TPU.format("ssh") + " --worker=all --command=")
  assert ssh_command(lines[3]) == "; ".join([
      "set -e", INSTALL_PYTHON, "rm -rf ~/safejax", "mkdir -p ~/safejax", "tar -xzf safejax.tar.gz -C ~/safejax",
      "rm safejax.tar.gz", *INSTALL])
  assert not archive.exists()  # a dry run writes nothing


def test_setup_clones_a_remote_and_honours_paths():
  lines = dry_run("setup.sh", REPO_URL="https://example.org/safejax.git", REPO_REF="v0.1", PYTHON="python3.12",
                  REMOTE_DIR="work/safejax", VENV_DIR="/opt/safejax venv")
  assert len(lines) == 1 and lines[0].startswith(TPU.format("ssh") + " --worker=all --command=")
  venv = "'/opt/safejax venv'"
  assert ssh_command(lines[0]) == "; ".join([
      "set -e", INSTALL_PYTHON.replace("python3.11", "python3.12"), "rm -rf ~/work/safejax",
      "git clone --quiet --depth=1 --branch=v0.1 https://example.org/safejax.git ~/work/safejax",
      *[step.replace("~/safejax-venv", venv).replace("~/safejax", "~/work/safejax").replace("python3.11", "python3.12")
        for step in INSTALL]])


LAUNCH_GIN = ["--gin_file=models/smollm2_135m.gin", "--gin_file=runs/pretrain_text.gin",
              "--gin.TEXT_FILES='gs://my-bucket/corpus/*.jsonl'", "--gin.VOCAB='gs://my-bucket/vocab.model'",
              "--gin.TRAIN_STEPS=20000"]


def test_launch_runs_the_same_gin_command_on_all_workers():
  lines = dry_run("launch.sh", *LAUNCH_GIN, BUCKET="my-bucket", RUN_NAME="smollm2-safety")
  remote = (
      "set -e; cd ~/safejax; " + CHECK_RUNNING + " then echo \"$(hostname): safejax train is already running "
      "(pid $(cat ~/safejax-train.pid))\" >&2; exit 1; fi; nohup ~/safejax-venv/bin/safejax train "
      "--gin_file=models/smollm2_135m.gin --gin_file=runs/pretrain_text.gin "
      "--gin.TEXT_FILES=\"'gs://my-bucket/corpus/*.jsonl'\" --gin.VOCAB=\"'gs://my-bucket/vocab.model'\" "
      "--gin.TRAIN_STEPS=20000 --gin.MODEL_DIR=\"'gs://my-bucket/runs/smollm2-safety'\" >> ~/safejax-train.log "
      "2>&1 < /dev/null & echo $! > ~/safejax-train.pid; echo \"$(hostname): started safejax train (pid $!), "
      "logging to ~/safejax-train.log\"")
  assert lines == [TPU.format("ssh") + " --worker=all --command=" + single_quoted(remote)]
  assert ssh_command(lines[0]) == remote
  # An explicit MODEL_DIR wins over BUCKET/RUN_NAME.
  lines = dry_run("launch.sh", "--gin.TRAIN_STEPS=5", MODEL_DIR="gs://other/run1", BUCKET="my-bucket", RUN_NAME="x")
  assert "--gin.TRAIN_STEPS=5 --gin.MODEL_DIR=\"'gs://other/run1'\" >>" in ssh_command(lines[0])


@pytest.mark.parametrize("args, settings, message", [
    ([], {"BUCKET": "b", "RUN_NAME": "r"}, "give the run's gin flags"),
    (["--gin.TRAIN_STEPS=5", "--model_dir=gs://b/r"], {"BUCKET": "b", "RUN_NAME": "r"},
     "'--model_dir=gs://b/r' is not a gin flag"),
    (["--gin.MODEL_DIR='gs://b/r'"], {"BUCKET": "b", "RUN_NAME": "r"}, "instead of passing --gin.MODEL_DIR"),
    (["--gin.TRAIN_STEPS=5"], {"BUCKET": "b"}, "set RUN_NAME"),
    (["--gin.TRAIN_STEPS=5"], {"MODEL_DIR": "/tmp/run"}, "MODEL_DIR must be a gs:// path all workers share"),
])
def test_launch_refuses_bad_input(args, settings, message):
  result = run_script("launch.sh", "--dry-run", *args, env={**SLICE, **settings}, check=False)
  assert result.returncode == 1 and result.stdout == ""
  assert message in result.stderr


def test_watch_and_stop():
  status = TPU.format("describe") + " --format='value(state,health)'"
  report = (CHECK_RUNNING + " then echo \"== $(hostname): safejax train running (pid $(cat ~/safejax-train.pid))\";"
            " else echo \"== $(hostname): safejax train not running\"; fi; tail -n {} ~/safejax-train.log")
  lines = dry_run("watch.sh")
  assert lines == [status, TPU.format("ssh") + " --worker=0 --command=" + single_quoted(report.format("50"))]
  lines = dry_run("watch.sh", "--follow", "--worker=all", "--lines=200")
  assert lines[1] == TPU.format("ssh") + " --worker=all --command=" + single_quoted(report.format("200 -F"))
  for bad in ["--worker=first", "--lines=many", "--tail"]:
    assert run_script("watch.sh", "--dry-run", bad, env=SLICE, check=False).returncode == 1
  stop = (CHECK_RUNNING + " then kill \"$(cat ~/safejax-train.pid)\"; echo \"$(hostname): stopped safejax train "
          "(pid $(cat ~/safejax-train.pid))\"; else echo \"$(hostname): safejax train not running\"; fi; "
          "rm -f ~/safejax-train.pid")
  assert dry_run("stop.sh") == [TPU.format("ssh") + " --worker=all --command=" + single_quoted(stop)]


def test_help_prints_the_header():
  result = run_script("launch.sh", "--help")
  assert result.stdout.startswith("Starts `safejax train` on every worker")
  assert "tpu_scripts/launch.sh [--config=FILE] [--dry-run] GIN_FLAGS..." in result.stdout


def all_ssh_commands() -> list[str]:
  settings = {"BUCKET": "b", "RUN_NAME": "r"}
  lines = (dry_run("setup.sh", **settings) + dry_run("setup.sh", REPO_URL="https://example.org/s.git")
           + dry_run("launch.sh", *LAUNCH_GIN, **settings) + dry_run("watch.sh", "--follow") + dry_run("stop.sh"))
  return [ssh_command(line) for line in lines if " ssh " in line]


def test_worker_commands_are_posix_shell():
  for command in all_ssh_commands():
    result = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True)
    assert result.returncode == 0, (command, result.stderr)


# --------------------------------------------------------------------------------------------
# Fake workers: launch, watch and stop for real

FAKE_GCLOUD = r"""#!/usr/bin/env bash
# Stands in for gcloud: `compute tpus tpu-vm ssh ... --worker=W --command=C` runs C with sh in each
# fake worker's home, $FAKE_WORKERS/<index>; other commands are only recorded.
set -euo pipefail
printf '%s\n' "$*" >> "$FAKE_WORKERS/gcloud.log"
[[ "$1 $2 $3 $4" == "compute tpus tpu-vm ssh" ]] || exit 0
for arg in "$@"; do
  case "$arg" in
    --worker=*) worker="${arg#--worker=}" ;;
    --command=*) command="${arg#--command=}" ;;
  esac
done
if [[ "$worker" == all ]]; then workers=(0 1); else workers=("$worker"); fi
status=0
for w in "${workers[@]}"; do
  (cd "$FAKE_WORKERS/$w" && HOME="$FAKE_WORKERS/$w" sh -c "$command") || status=$?
done
exit "$status"
"""

# Stands in for the venv's `safejax`: records its arguments, then waits to be stopped.
FAKE_SAFEJAX = r"""#!/bin/sh
python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "$@" > "$HOME/argv.json"
echo "train: step 1 loss 9.9"
exec sleep 60
"""


def _executable(path: Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  return True


@pytest.fixture
def fake_workers(tmp_path):
  """Two fake workers with safejax 'installed'; yields (env, worker homes); kills what was started."""
  bin_dir = tmp_path / "bin"
  _executable(bin_dir / "gcloud", FAKE_GCLOUD)
  homes = [tmp_path / "workers" / str(i) for i in range(2)]
  for home in homes:
    (home / "safejax").mkdir(parents=True)
    _executable(home / "safejax-venv" / "bin" / "safejax", FAKE_SAFEJAX)
  env = {**SLICE, "BUCKET": "my-bucket", "RUN_NAME": "r1", "FAKE_WORKERS": str(tmp_path / "workers")}
  yield env, f"{bin_dir}:{os.environ['PATH']}", homes
  for home in homes:  # the fake trainers this test launched, by their recorded ids
    pid_file = home / "safejax-train.pid"
    if pid_file.exists() and _alive(pid := int(pid_file.read_text())):
      os.kill(pid, signal.SIGKILL)


def _wait_for(condition, timeout_s: float = 10.0) -> bool:
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if condition():
      return True
    time.sleep(0.05)
  return condition()


def test_launch_watch_stop_on_fake_workers(fake_workers):
  env, path, homes = fake_workers
  gin = ["--gin_file=models/smollm2_135m.gin", "--gin.TEXT_FILES='gs://my-bucket/corpus/*.jsonl'",
         "--gin.note=\"it's a 'quoted' $HOME `x` \\ value\"", "--gin.TRAIN_STEPS=3"]
  result = run_script("launch.sh", *gin, env=env, path=path)
  assert result.stdout.count("started safejax train") == 2
  for home in homes:
    assert _wait_for(lambda: (home / "argv.json").exists() and (home / "argv.json").read_text().strip())
    # Every worker got exactly the arguments given here: no word split, globbed or expanded.
    assert json.loads((home / "argv.json").read_text()) == ["train", *gin, "--gin.MODEL_DIR='gs://my-bucket/runs/r1'"]
    assert _alive(int((home / "safejax-train.pid").read_text()))

  again = run_script("launch.sh", *gin, env=env, path=path, check=False)
  refusals = re.findall(r"^\S+: safejax train is already running \(pid \d+\)$", again.stderr, re.M)
  assert again.returncode == 1 and len(refusals) == 2

  watched = run_script("watch.sh", "--worker=all", env=env, path=path).stdout
  assert watched.count("safejax train running (pid") == 2 and watched.count("train: step 1 loss 9.9") == 2

  pids = [int((home / "safejax-train.pid").read_text()) for home in homes]
  stopped = run_script("stop.sh", env=env, path=path).stdout
  assert stopped.count("stopped safejax train") == 2
  assert _wait_for(lambda: not any(_alive(pid) for pid in pids))
  assert not any((home / "safejax-train.pid").exists() for home in homes)
  assert run_script("watch.sh", env=env, path=path).stdout.count("safejax train not running") == 1
  calls = (Path(env["FAKE_WORKERS"]) / "gcloud.log").read_text().splitlines()
  assert [c.split()[3] for c in calls] == ["ssh", "ssh", "describe", "ssh", "ssh", "describe", "ssh"]


# --------------------------------------------------------------------------------------------
# gcloud's and shellcheck's verdicts


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcloud") is None, reason="gcloud is not installed")
def test_gcloud_accepts_every_printed_command(tmp_path):
  """gcloud parses each printed command and stops only for want of an account (nothing is sent)."""
  env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
         "CLOUDSDK_CORE_DISABLE_PROMPTS": "1", "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
         "CLOUDSDK_API_ENDPOINT_OVERRIDES_TPU": "http://127.0.0.1:9/"}
  settings = {"ACCELERATOR_TYPE": "v5litepod-16", "RUNTIME_VERSION": "v2-alpha-tpuv5-lite", "PROVISIONING": "spot",
              "BUCKET": "b", "RUN_NAME": "r"}
  lines = (dry_run("create.sh", **settings) + dry_run("setup.sh", TMPDIR=str(tmp_path))
           + dry_run("launch.sh", *LAUNCH_GIN, **settings) + dry_run("watch.sh", "--follow")
           + dry_run("stop.sh") + dry_run("teardown.sh", "--yes"))
  gcloud_lines = [line for line in lines if line.startswith("gcloud ")]
  assert len(gcloud_lines) == 8
  for line in gcloud_lines:
    result = subprocess.run(shlex.split(line), env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "do not currently have an active account" in result.stderr, (line, result.stderr)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck is not installed")
def test_shellcheck_is_clean():
  scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
  assert len(scripts) == 7
  result = subprocess.run(["shellcheck", "--severity=style", *scripts], capture_output=True, text=True)
  assert result.returncode == 0, result.stdout
