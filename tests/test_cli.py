"""The `safejax` command: gin flags, early failure on bad bindings, end-to-end train."""

import dataclasses
import subprocess
import sys

import gin
import pytest

from safejax import cli
from safejax.demo import recipe as demo_config


def test_split_gin_flags():
  files, bindings, paths, rest = cli._split_gin_flags(
      ["--gin_file=a.gin", "--gin_file", "b.gin", "--gin.X=1", "--gin_search_paths=p,q", "prompt"])
  assert (files, bindings, paths, rest) == (["a.gin", "b.gin"], ["X=1"], ["p", "q"], ["prompt"])
  with pytest.raises(SystemExit, match="--gin.NAME=VALUE"):
    cli._split_gin_flags(["--gin.novalue"])


def test_help_lists_commands(capsys):
  assert cli.main(["--help"]) == 0
  out = capsys.readouterr().out
  assert "train" in out and "decode" in out and "--gin_file" in out


def test_class_bindings_reach_a_default_config_parameter(monkeypatch):
  """`--gin.DemoConfig.x=...` alone configures demo's `config` (None, built after parsing); a binding
  of the parameter itself still wins; the command's default gin file is parsed first and overridable."""
  monkeypatch.setattr(cli, "_resolve", lambda command: _record_demo)
  assert cli.main(["demo", "--gin.DemoConfig.seeds=(7,)", "--gin.OptimizerConfig.learning_rate=0.003"]) == 0
  assert _RECORDED[-1].seeds == (7,) and _RECORDED_LR[-1] == 0.003
  # A scoped reference: rebuilding an unscoped DemoConfig() instead would lose seeds=(3,).
  assert cli.main(["demo", "--gin._record_demo.config=@small/DemoConfig()", "--gin.small/DemoConfig.seeds=(3,)"]) == 0
  assert _RECORDED[-1].seeds == (3,)
  assert cli.main(["demo"]) == 0
  assert _RECORDED_LR[-1] == 5e-3  # gin/runs/demo.gin's default, parsed before the user's flags
  assert dataclasses.replace(_RECORDED[-1], decoding=None) == dataclasses.replace(demo_config.DemoConfig(), decoding=None)
  assert _RECORDED[-1].decoding.max_new_tokens == 32


_RECORDED = []
_RECORDED_LR = []


def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "safejax.cli", *args], capture_output=True, text=True, timeout=300)


def test_misspelled_binding_fails_before_compute(tmp_path):
  result = run_cli("train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
                   f"--gin.MODEL_DIR='{tmp_path}'", "--gin.MIXTURE_OR_TASK_NAME='x'", "--gin.train.batch_sise=4")
  assert result.returncode != 0
  assert "batch_sise" in result.stderr
  assert not (tmp_path / "checkpoints").exists()  # nothing ran


def test_unknown_command_and_flags_fail_clearly():
  result = run_cli("trian")
  assert result.returncode != 0 and "unknown command" in result.stderr
  result = run_cli("train", "--steps=3")
  assert result.returncode != 0 and "--gin.NAME=VALUE" in result.stderr


def test_train_from_the_command_line(tmp_path, tiny_corpus, tiny_vocab):
  model_dir = tmp_path / "model"
  result = run_cli("train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain_text.gin",
                   f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TEXT_FILES='{tiny_corpus}'",
                   f"--gin.VOCAB='{tiny_vocab.sentencepiece_model_file}'", "--gin.TRAIN_STEPS=3",
                   "--gin.BATCH_SIZE=8", "--gin.TASK_FEATURE_LENGTHS=32")
  assert result.returncode == 0, result.stderr[-3000:]
  assert (model_dir / "checkpoints" / "3").is_dir()
  assert (model_dir / "vocab.model").is_file() and (model_dir / "model_config.json").is_file()


@gin.configurable
def _record_demo(config: demo_config.DemoConfig | None = None) -> int:
  from safejax.train import OptimizerConfig

  _RECORDED.append(config or demo_config.DemoConfig())
  _RECORDED_LR.append(OptimizerConfig().learning_rate)
  return 0
