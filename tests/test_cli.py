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
  assert _RECORDED[-1].decoding.max_new_tokens == 96  # gin/runs/demo.gin: room for a four-step procedure


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


# -- issue 13: every typo fails, required bindings are named, every command explains itself -----

_TEXT_RUN = ["--gin_file=models/tiny.gin", "--gin_file=runs/pretrain_text.gin", "--gin.MODEL_DIR='/nonexistent/m'",
             "--gin.TEXT_FILES='/nonexistent/*.jsonl'", "--gin.VOCAB='/nonexistent/v.model'"]


@pytest.mark.parametrize("binding, named, suggestion", [
    ("--gin.NOT_A_BINDING=1", "NOT_A_BINDING", None),
    ("--gin.TRAIN_STEP=3", "TRAIN_STEP", "TRAIN_STEPS"),
    ("--gin.BATCH_SIZ=4", "BATCH_SIZ", "BATCH_SIZE"),
])
def test_a_macro_nothing_references_fails_before_compute(binding, named, suggestion):
  with pytest.raises(SystemExit) as error:
    cli.main(["train", *_TEXT_RUN, binding])
  message = str(error.value)
  assert f"--gin.{named}=" in message and "nothing uses" in message
  if suggestion:
    assert f"did you mean {suggestion}?" in message


def test_used_macros_and_macros_used_by_bindings_pass_the_check(monkeypatch):
  monkeypatch.setattr(cli, "_resolve", lambda command: _record_sft)
  assert cli.main(["sft-data", "--gin._record_sft.output_file=%OUT", "--gin.OUT='/tmp/x.jsonl'"]) == 0
  assert _SFT[-1] == "/tmp/x.jsonl"


@gin.configurable
def _record_sft(output_file: str = gin.REQUIRED) -> int:
  _SFT.append(output_file)
  return 0


_SFT = []


def test_missing_required_bindings_are_named_in_one_line():
  with pytest.raises(SystemExit) as error:
    cli.main(["train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain_text.gin"])
  message = str(error.value)
  assert "\n" not in message
  for name in ("--gin.MODEL_DIR=", "--gin.TEXT_FILES=", "--gin.VOCAB="):
    assert name in message
  with pytest.raises(SystemExit, match=r"--gin\.train\.model_dir=.*--gin\.train\.train_steps="):
    cli.main(["train"])


@gin.configurable
def _inner_needs(value: str = gin.REQUIRED) -> str:
  return value


@gin.configurable
def _outer_calls_inner() -> int:
  _inner_needs()
  return 0


def test_a_required_binding_found_missing_mid_run_is_one_line(monkeypatch):
  monkeypatch.setattr(cli, "_resolve", lambda command: _outer_calls_inner)
  with pytest.raises(SystemExit) as error:
    cli.main(["demo"])
  assert "missing gin binding" in str(error.value) and "_inner_needs" in str(error.value)
  assert "value" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_answers_help(command, capsys):
  assert cli.main([*command.split(), "--help"]) == 0
  out = capsys.readouterr().out
  func = cli._resolve(command)
  assert out.startswith(f"usage: safejax {command} ")
  assert (func.__doc__ or "").strip().splitlines()[0] in out
  assert f"gin parameters (--gin.{func.__name__}.NAME=VALUE)" in out
  assert "example:\n  safejax " + command in out
  first = next(p for p in __import__("inspect").signature(func).parameters if p != "inputs")
  assert f"  {func.__name__}.{first} = " in out


def test_help_shows_config_class_defaults(capsys):
  assert cli.main(["prepare", "-h"]) == 0
  out = capsys.readouterr().out
  assert "PipelineConfig.num_shards = 4" in out and "prepare.config = REQUIRED" in out
  assert "unknown flags" not in out


def test_start_up_noise_stays_off_the_console_unless_verbose():
  quiet = run_cli("prepare", "--help")
  assert quiet.returncode == 0 and "PipelineConfig.num_shards" in quiet.stdout
  noise = ("absl::InitializeLog", "cuda", "oneDNN", "cpu_feature_guard", "apitools")
  assert not [line for line in quiet.stderr.splitlines() if any(n in line for n in noise)], quiet.stderr
  missing = run_cli("train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain_text.gin")
  assert missing.returncode != 0 and "Traceback" not in missing.stderr
  assert missing.stderr.strip().count("\n") == 0 and "--gin.MODEL_DIR=" in missing.stderr
  assert run_cli("prepare", "--help", "--verbose").returncode == 0


def test_a_moved_setting_names_its_new_home():
  with pytest.raises(SystemExit, match=r"--gin.evaluate.n_per_set is now --gin.EvalConfig.n_per_set"):
    cli.main(["demo", "--gin.evaluate.n_per_set=8"])
  with pytest.raises(SystemExit, match=r"--gin.DemoConfig.world_seed is now --gin.WorldConfig.seed"):
    cli.main(["demo", "--gin.DemoConfig.world_seed=1"])


def test_quick_is_a_preset_gin_file_parsed_before_the_users_flags(monkeypatch):
  monkeypatch.setattr(cli, "_resolve", lambda command: _record_demo)
  assert cli.main(["demo", "--quick"]) == 0
  assert _RECORDED[-1].rungs == ("raw", "tags") and _RECORDED[-1].seeds == (0,)
  assert cli.main(["demo", "--quick", "--gin.DemoConfig.seeds=(4,)"]) == 0
  assert _RECORDED[-1].seeds == (4,)  # the user's flag wins over the preset
  assert "preset: --quick parses runs/demo_quick.gin" in cli.command_help("demo", demo_config.demo)


# -- issue 23: either order of README's commands, one-line errors, group help ---------------------


def test_the_module_runs_from_a_folder_holding_gin_folder_names(tmp_path, tiny_corpus, tiny_vocab):
  """`python -m safejax.cli` puts the working directory on sys.path; folders there named like
  gin's (a demo's runs/, a user's models/) must not turn into packages gin reads files from."""
  for name in ("runs", "models", "classify", "pipeline"):
    (tmp_path / name).mkdir()
  model_dir = tmp_path / "model"
  result = subprocess.run(
      [sys.executable, "-m", "safejax.cli", "train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain_text.gin",
       f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TEXT_FILES='{tiny_corpus}'",
       f"--gin.VOCAB='{tiny_vocab.sentencepiece_model_file}'", "--gin.TRAIN_STEPS=2", "--gin.BATCH_SIZE=8",
       "--gin.TASK_FEATURE_LENGTHS=32"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (model_dir / "checkpoints" / "2").is_dir()


def test_gin_files_resolve_against_the_working_directory_then_the_search_paths(tmp_path, monkeypatch):
  (tmp_path / "mine").mkdir()
  (tmp_path / "mine" / "tiny.gin").write_text("ModelConfig.num_layers = 7\n")
  monkeypatch.chdir(tmp_path)
  assert cli.find_gin_file("mine/tiny.gin") == str(tmp_path / "mine" / "tiny.gin")
  assert cli.find_gin_file("tiny.gin", [str(tmp_path / "mine")]) == str(tmp_path / "mine" / "tiny.gin")
  assert cli.find_gin_file("models/tiny.gin") == str(cli.REPO_GIN_DIR + "/models/tiny.gin")
  with pytest.raises(IOError, match=r"'nope.gin' not found in .*gin"):
    cli.find_gin_file("nope.gin")
  with pytest.raises(SystemExit, match="bad gin configuration: gin file 'nope.gin' not found"):
    cli.main(["train", "--gin_file=nope.gin"])


def test_a_folder_of_the_working_directory_is_no_package_while_gin_parses(tmp_path, monkeypatch):
  import importlib.util

  (tmp_path / "runs").mkdir()
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  assert importlib.util.find_spec("runs").origin is None  # what gin's resource reader trips on
  with cli._folders_never_packages():
    with pytest.raises(ModuleNotFoundError, match="folder of the working directory"):
      importlib.util.find_spec("runs")
    assert importlib.util.find_spec("json").origin  # real modules still import
  # An include whose folder is such a package: gin looks on to the search paths.
  cli.parse_gin(["runs/pretrain_text.gin"], ["TEXT_FILES='x'", "VOCAB='v'", "MODEL_DIR='m'"])
  assert gin.query_parameter("train.train_steps").__class__.__name__ == "ConfigurableReference"


@pytest.mark.parametrize("binding, message", [
    ("--gin.TRAIN_STEPS='abc'", "train.train_steps (via %TRAIN_STEPS) = 'abc': expected int, got str"),
    ("--gin.ModelConfig.num_layers=2.5", "ModelConfig.num_layers = 2.5: expected int, got float"),
    ("--gin.train.seed=True", "train.seed = True: expected int, got bool"),
    ("--gin.OptimizerConfig.learning_rate='fast'", "OptimizerConfig.learning_rate = 'fast': expected float"),
])
def test_a_wrong_typed_value_fails_in_one_line_naming_the_binding(binding, message):
  with pytest.raises(SystemExit) as error:
    cli.main(["train", *_TEXT_RUN, binding])
  assert str(error.value) == f"safejax train: {message}" or str(error.value).startswith(f"safejax train: {message}")
  assert "\n" not in str(error.value)


def test_values_of_the_right_type_pass_the_check():
  cli.parse_gin(["models/tiny.gin", "runs/pretrain_text.gin"],
                ["TEXT_FILES='x'", "VOCAB='v'", "MODEL_DIR='m'", "OptimizerConfig.learning_rate=1",
                 "train.init_from=None"])
  from safejax.train import train

  cli.check_values("train", train)  # an int is a fine float; None fits `str | None`


def test_out_of_range_values_and_unwritable_paths_fail_in_one_line(tmp_path, tiny_corpus, tiny_vocab):
  base = ["train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain_text.gin",
          f"--gin.TEXT_FILES='{tiny_corpus}'", f"--gin.VOCAB='{tiny_vocab.sentencepiece_model_file}'",
          "--gin.TASK_FEATURE_LENGTHS=32"]
  negative = run_cli(*base, f"--gin.MODEL_DIR='{tmp_path / 'm'}'", "--gin.BATCH_SIZE=-1")
  assert negative.returncode == 1 and negative.stderr.strip().splitlines() == [
      "safejax train: train.batch_size must be a positive integer, got -1"]
  (tmp_path / "file").write_text("not a folder")
  unwritable = run_cli(*base, f"--gin.MODEL_DIR='{tmp_path / 'file' / 'm'}'", "--gin.TRAIN_STEPS=1")
  assert unwritable.returncode == 1 and "Traceback" not in unwritable.stderr
  assert unwritable.stderr.strip().splitlines()[-1] == (
      f"safejax train: [Errno 20] Not a directory: '{tmp_path / 'file' / 'm'}'")


def test_a_bad_corpus_line_is_one_line_naming_file_and_line(tmp_path, tiny_vocab):
  corpus = tmp_path / "bad.jsonl"
  corpus.write_text("".join(f'{{"text": "The river runs number {i}."}}\n' for i in range(30)) + "{not json\n")
  result = run_cli("train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain_text.gin",
                   f"--gin.MODEL_DIR='{tmp_path / 'm'}'", f"--gin.TEXT_FILES='{corpus}'",
                   f"--gin.VOCAB='{tiny_vocab.sentencepiece_model_file}'", "--gin.TRAIN_STEPS=20", "--gin.BATCH_SIZE=8",
                   "--gin.TASK_FEATURE_LENGTHS=32", "--gin.train.progress=False")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f"safejax train: bad record in {corpus}:31: malformed_json")


@pytest.mark.parametrize("group", ["classify", "judges"])
def test_a_command_group_lists_its_subcommands(group, capsys):
  assert cli.main([group, "--help"]) == 0
  out = capsys.readouterr().out
  commands = sorted(c for c in cli.COMMANDS if c.startswith(group + " "))
  for command in commands:
    first_line = (cli._resolve(command).__doc__ or "").strip().splitlines()[0]
    assert f"  {command}" in out and first_line in out
  with pytest.raises(SystemExit) as error:
    cli.main([group])
  assert error.value.code == 2
  assert f"'{group}' needs a subcommand" in capsys.readouterr().err


def test_ci_runs_the_demo_quick_before_the_readme_test_line():
  """.ci/run runs README's main-job line with --quick, then README's test line: the README's two
  commands in the order a new user runs them."""
  root = __import__("pathlib").Path(__file__).resolve().parents[1]
  lines = subprocess.run([str(root / ".ci" / "run"), "--print"], capture_output=True, text=True,
                         check=True).stdout.splitlines()
  readme = (root / "README.md").read_text()
  assert len(lines) == 2 and lines[0].endswith("&& safejax demo --quick") and lines[1].endswith("pytest -n 2")
  assert f"    {lines[0].removesuffix(' --quick')}\n" in readme and f"    {lines[1]}\n" in readme


def test_a_missing_input_path_is_one_line():
  with pytest.raises(SystemExit) as error:
    cli.main(["train", *_TEXT_RUN])
  assert str(error.value) == "safejax train: /nonexistent/v.model; No such file or directory"
