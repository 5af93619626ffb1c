"""The `safejax` command: subcommands configured t5x-style with gin.

  safejax train --gin_file=models/demo.gin --gin_file=runs/pretrain_text.gin --gin.TRAIN_STEPS=100 \\
      --gin.MODEL_DIR="'/tmp/m'" --gin.TEXT_FILES="'docs.jsonl'" --gin.VOCAB="'vocab.model'"
  safejax decode --gin.decode.checkpoint_dir="'/tmp/m'" "Once upon a time"

Every subcommand is a `@gin.configurable` function (the table `COMMANDS`). Config objects follow
t5x's pattern: a parameter such as `train(model_config=None)` is built inside the function from its
class's gin bindings (`ModelConfig.num_layers = 4`), or bound whole (`train.model_config =
@ModelConfig()`). A command may parse default gin files before the user's (`DEFAULT_GIN_FILES`).
Flags:
  --gin_file=PATH        repeatable; looked up as given, then in each --gin_search_paths entry
                         (the repository's gin/ folder is always searched last)
  --gin.NAME=VALUE       repeatable; a gin binding, e.g. --gin.train.batch_size=16
  --gin_search_paths=A,B
Positional arguments are the command's inputs (prompts for decode, files for classify score) and
reach the function as its `inputs` parameter; a bare --NAME turns on a boolean parameter of the
command (`safejax demo --quick`). Bindings are parsed and checked before anything is
computed: a misspelled or unknown name fails at once with gin's message naming it.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Sequence

import gin

# subcommand -> "module:function". Modules are imported lazily so `safejax --help` is instant.
COMMANDS: dict[str, str] = {
    "train": "safejax.train:train",
    "finetune": "safejax.train:finetune",
    "sft-data": "safejax.posttrain:build_sft_data",
    "demo": "safejax.demo.recipe:demo",
    "decode": "safejax.decoding.generate:decode",
    "eval": "safejax.evaluation.checkpoints:eval_checkpoints",
    "classify train": "safejax.safety.cli:train_classifier",
    "classify calibrate": "safejax.safety.cli:calibrate_classifier",
    "classify eval": "safejax.safety.cli:eval_classifier",
    "classify score": "safejax.safety.cli:score_files",
    "prepare": "safejax.data.pipeline:prepare",
    "judges validate": "safejax.evaluation.judge_validation:validate_judges_main",
    "import-hf": "safejax.hf_interop:import_hf",
    "export-hf": "safejax.hf_interop:export_hf",
    "serve": "safejax.serve.app:serve",
}

# Gin files a command parses before the user's: its defaults, overridable by any later binding.
DEFAULT_GIN_FILES: dict[str, tuple[str, ...]] = {"demo": ("runs/demo.gin",)}

REPO_GIN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gin")


def _split_gin_flags(argv: Sequence[str]) -> tuple[list[str], list[str], list[str], list[str]]:
  """Separates --gin_file, --gin.X=V and --gin_search_paths from the other arguments."""
  files, bindings, search_paths, rest = [], [], [], []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    value = None
    for flag in ("--gin_file", "--gin_search_paths"):
      if arg == flag:
        if i + 1 >= len(args):
          raise SystemExit(f"safejax: {flag} needs a value")
        value, i = args[i + 1], i + 1
      elif arg.startswith(flag + "="):
        value = arg.split("=", 1)[1]
      if value is not None:
        (files if flag == "--gin_file" else search_paths).extend(
            [value] if flag == "--gin_file" else [p for p in value.split(",") if p])
        break
    else:
      if arg.startswith("--gin."):
        binding = arg[len("--gin."):]
        if "=" not in binding:
          raise SystemExit(f"safejax: {arg!r} is not of the form --gin.NAME=VALUE")
        bindings.append(binding)
      else:
        rest.append(arg)
    i += 1
  return files, bindings, search_paths, rest


def parse_gin(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()) -> None:
  """Parses gin files and bindings; raises ValueError naming an unknown configurable or parameter."""
  import importlib.util  # noqa: F401  gin-config 0.5 needs it imported before parsing.

  gin.clear_config()
  for path in [*search_paths, REPO_GIN_DIR]:
    gin.add_config_file_search_path(path)
  # gin logs an ERROR for every search-path miss before it finds a file; failures raise anyway.
  logging.disable(logging.ERROR)
  try:
    # Not finalized: commands import some modules lazily, and those register configurables later.
    gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=False)
  finally:
    logging.disable(logging.NOTSET)


def _resolve(command: str):
  module_name, func_name = COMMANDS[command].split(":")
  return getattr(importlib.import_module(module_name), func_name)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  names = sorted(COMMANDS)
  parser = argparse.ArgumentParser(
      prog="safejax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("command", choices=sorted({n.split()[0] for n in names}))
  if not argv or argv[0] in ("-h", "--help"):
    parser.print_help()
    print("\ncommands:\n  " + "\n  ".join(names))
    return 0
  # Two-word commands ("classify train") take the second word too.
  command = argv[0]
  if command not in COMMANDS and len(argv) > 1 and f"{argv[0]} {argv[1]}" in COMMANDS:
    command, argv = f"{argv[0]} {argv[1]}", argv[2:]
  elif command in COMMANDS:
    argv = argv[1:]
  else:
    parser.error(f"unknown command {' '.join(argv[:2])!r}; commands: {', '.join(names)}")

  files, bindings, search_paths, rest = _split_gin_flags(argv)
  func = _resolve(command)  # importing registers the command's configurables with gin
  # A bare --NAME switches on a boolean parameter of the command (`safejax demo --quick`).
  switches = {p.name for p in inspect.signature(func).parameters.values() if isinstance(p.default, bool)}
  kwargs = {a[2:]: True for a in rest if a.startswith("--") and a[2:] in switches}
  unknown_flags = [a for a in rest if a.startswith("--") and a[2:] not in switches]
  if unknown_flags:
    parser.error(f"unknown flags {unknown_flags}: configure with --gin.NAME=VALUE")
  rest = [a for a in rest if not a.startswith("--")]
  # safejax speaks at INFO; libraries (orbax, absl, tf) only when something is wrong.
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  logging.getLogger("safejax").setLevel(logging.INFO)
  try:
    parse_gin([*DEFAULT_GIN_FILES.get(command, ()), *files], bindings, search_paths)
  except (ValueError, KeyError, IOError) as e:
    raise SystemExit(f"safejax {command}: bad gin configuration: {e}") from None
  if rest:
    if "inputs" not in inspect.signature(func).parameters:
      parser.error(f"safejax {command} takes no positional inputs, got {rest}")
    kwargs["inputs"] = rest
  result = func(**kwargs)
  return result if isinstance(result, int) else 0


if __name__ == "__main__":
  sys.exit(main())
