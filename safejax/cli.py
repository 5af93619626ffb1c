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
  -v, --verbose          show TensorFlow's, absl's and JAX's start-up lines (CUDA-driver probes,
                         oneDNN and CPU-feature notices), kept off the console otherwise
  -h, --help             after a command: its docstring, gin parameters with defaults, an example
Positional arguments are the command's inputs (prompts for decode, files for classify score) and
reach the function as its `inputs` parameter; a bare --NAME turns on a boolean parameter of the
command (`safejax demo --quick`). Bindings are parsed and checked before anything is
computed: a misspelled or unknown name fails at once with gin's message naming it, and so does a
macro set with --gin.NAME=VALUE that no parsed file or binding uses (`--gin.TRAIN_STEP=3` for
TRAIN_STEPS); required bindings left unset are named in one line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import importlib
import importlib.abc
import importlib.machinery
import inspect
import logging
import os
import re
import sys
import tempfile
import types
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence

import gin

from safejax import UserError

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
# Presets: a bare --NAME that parses a gin file after the defaults and before the user's files
# (`safejax demo --quick` is `safejax demo --gin_file=runs/demo_quick.gin`).
PRESETS: dict[str, dict[str, str]] = {"demo": {"quick": "runs/demo_quick.gin"}}

# One example per command, for `safejax COMMAND --help`.
EXAMPLES: dict[str, str] = {
    "train": "safejax train --gin_file=models/demo.gin --gin_file=runs/pretrain_text.gin \\\n"
             "    --gin.MODEL_DIR=\"'/tmp/m'\" --gin.TEXT_FILES=\"'corpus/*.jsonl'\" --gin.VOCAB=\"'vocab.model'\"",
    "finetune": "safejax finetune --gin_file=models/demo.gin --gin_file=runs/finetune_chat.gin \\\n"
                "    --gin.finetune.init_from=\"'/tmp/base'\" --gin.MODEL_DIR=\"'/tmp/tuned'\" "
                "--gin.CHAT_FILES=\"'sft/*.jsonl'\" --gin.VOCAB=\"'/tmp/base/vocab.model'\"",
    "sft-data": "safejax sft-data --gin.build_sft_data.output_file=\"'/tmp/benign.jsonl'\" \\\n"
                "    --gin.build_sft_data.choice_files=\"['../shared/data/capability/mc_evals/commonsense_qa.jsonl']\"",
    "demo": "safejax demo --quick",
    "decode": "safejax decode --gin.decode.checkpoint_dir=\"'/tmp/demo'\" \"Once upon a time\" \"The river\"",
    "eval": "safejax eval --gin_file=runs/eval.gin --gin.eval_checkpoints.checkpoints=\"{'raw': '/tmp/raw'}\" \\\n"
            "    --gin.eval_checkpoints.out_dir=\"'/tmp/report'\" --gin.EvalConfig.data_dir=\"'../shared/data'\"",
    "classify train": "safejax classify train --gin_file=classify/ngram.gin --gin.CLASSIFIER_DIR=\"'/tmp/clf'\"",
    "classify calibrate": "safejax classify calibrate --gin_file=classify/ngram.gin --gin.CLASSIFIER_DIR=\"'/tmp/clf'\"",
    "classify eval": "safejax classify eval --gin_file=classify/ngram.gin --gin.CLASSIFIER_DIR=\"'/tmp/clf'\"",
    "classify score": "safejax classify score --gin.score_files.model_dir=\"'/tmp/clf'\" docs.jsonl notes.txt",
    "prepare": "safejax prepare --gin_file=pipeline/shared_data.gin",
    "judges validate": "safejax judges validate --gin.validate_judges_main.data_dir=\"'../shared/data'\" \\\n"
                       "    --gin.validate_judges_main.out_dir=\"'/tmp/judges'\"",
    "import-hf": "safejax import-hf --gin.import_hf.hf_dir=\"'SmolLM2-135M'\" --gin.import_hf.model_dir=\"'/tmp/smollm2'\" \\\n"
                 "    --gin.import_hf.vocab_file=\"'/tmp/run/vocab.model'\"",
    "export-hf": "safejax export-hf --gin.export_hf.model_dir=\"'/tmp/m'\" --gin.export_hf.hf_dir=\"'/tmp/m_hf'\"",
    "serve": "safejax serve --gin.serve.checkpoint_dir=\"'/tmp/demo'\" --gin.serve.port=8000",
}
VERBOSE_FLAGS = ("-v", "--verbose")
HELP_FLAGS = ("-h", "--help")

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


def find_gin_file(name: str, search_paths: Sequence[str] = ()) -> str:
  """The absolute path of a --gin_file: `name` as given (against the working directory), else
  under each search path, the repository's gin/ folder last. Raises IOError naming every place
  looked in.

  Resolved here rather than by gin, whose resource reader takes a relative path's folder for a
  Python package (see `_NoFolderPackages`).
  """
  if os.path.isabs(name):
    if os.path.isfile(name):
      return name
    raise IOError(f"gin file {name!r} does not exist")
  places = [os.getcwd(), *search_paths, REPO_GIN_DIR]
  for place in places:
    path = os.path.join(place, name)
    if os.path.isfile(path):
      return os.path.abspath(path)
  raise IOError(f"gin file {name!r} not found in {', '.join(places)}")


class _NoFolderPackages(importlib.abc.MetaPathFinder):
  """Refuses to import a folder of the working directory as a namespace package.

  gin's resource reader (gin.resource_reader) reads the folder of an include it has not found
  yet (`include 'runs/pretrain.gin'`) as a Python package name. Under `python -m safejax.cli`
  the working directory heads sys.path, so a folder there named runs/, models/ or classify/ (a
  demo's output, say) is found as a namespace package, which has no file, and gin crashes on it
  (TypeError).
  Refused, it is "no such package", which gin reads as "not here" and looks on; the `safejax`
  script, whose sys.path has no working directory, sees the same. Real packages still import.
  """

  def __init__(self, folder: str):
    self.folder = os.path.realpath(folder)

  def find_spec(self, name, path=None, target=None):
    if path is not None:  # a submodule: its parent already imported as a package
      return None
    spec = importlib.machinery.PathFinder.find_spec(name)
    if spec is not None and spec.origin is None and spec.submodule_search_locations and any(
        os.path.dirname(os.path.realpath(p)) == self.folder for p in spec.submodule_search_locations):
      raise ModuleNotFoundError(f"{name!r} is a folder of the working directory, not a package", name=name)
    return None


@contextlib.contextmanager
def _folders_never_packages() -> Iterator[None]:
  """While gin parses, folders of the working directory are never packages (`_NoFolderPackages`)."""
  finder = _NoFolderPackages(os.getcwd())
  sys.meta_path.insert(0, finder)
  try:
    yield
  finally:
    sys.meta_path.remove(finder)


def parse_gin(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()) -> None:
  """Parses gin files and bindings; raises ValueError naming an unknown configurable or
  parameter, IOError naming a gin file that is nowhere to be found."""
  import importlib.util  # noqa: F401  gin-config 0.5 needs it imported before parsing.

  gin.clear_config()
  for path in [*search_paths, REPO_GIN_DIR]:
    gin.add_config_file_search_path(path)
  paths = [find_gin_file(name, search_paths) for name in files]
  # gin logs an ERROR for every search-path miss before it finds a file; failures raise anyway.
  logging.disable(logging.ERROR)
  try:
    with _folders_never_packages():
      # Not finalized: commands import some modules lazily, and those register configurables later.
      gin.parse_config_files_and_bindings(paths, list(bindings), finalize_config=False)
  finally:
    logging.disable(logging.NOTSET)


# Bindings whose settings moved to a config class of their own (issue 20): old name -> new name.
RENAMED_BINDINGS: dict[str, str] = {
    "evaluate": "EvalConfig", "DemoConfig.world_seed": "WorldConfig.seed",
    "DemoConfig.harmful_topics": "WorldConfig.n_harmful_topics", "DemoConfig.num_docs": "CorpusSizes.num_docs",
    "DemoConfig.classifier_docs": "CorpusSizes.classifier_docs", "DemoConfig.heldout_docs": "CorpusSizes.heldout_docs",
    "DemoConfig.tag_detector_docs": "CorpusSizes.tag_detector_docs", "DemoConfig.n_harmful": "EvalConfig.n_per_set",
    "DemoConfig.n_per_task": "EvalConfig.n_per_task", "DemoConfig.tag_p": "PipelineConfig.tag_p",
}


def renamed_hint(bindings: Sequence[str]) -> str:
  """"; X is now Y" for each binding that names a setting by its old name."""
  hints = []
  for binding in bindings:
    name = binding.split("=", 1)[0].strip()
    for old, new in RENAMED_BINDINGS.items():
      if name == old or name.startswith(old + "."):
        hints.append(f"--gin.{name} is now --gin.{new}{name[len(old):]}")
  return "".join(f"; {hint}" for hint in hints)


def _resolve(command: str):
  module_name, func_name = COMMANDS[command].split(":")
  return getattr(importlib.import_module(module_name), func_name)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = any(a in VERBOSE_FLAGS for a in argv)
  argv = [a for a in argv if a not in VERBOSE_FLAGS]
  names = sorted(COMMANDS)
  parser = argparse.ArgumentParser(
      prog="safejax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("command", choices=sorted({n.split()[0] for n in names}))
  if not argv or argv[0] in ("-h", "--help"):
    parser.print_help()
    print("\ncommands:\n  " + "\n  ".join(names))
    return 0
  if argv[0] in _groups() and (len(argv) == 1 or argv[1] in HELP_FLAGS):
    with quiet_startup(verbose):
      listing = group_help(argv[0])
    if len(argv) == 1:
      parser.error(f"{argv[0]!r} needs a subcommand\n{listing}")
    print(listing)
    return 0
  # Two-word commands ("classify train") take the second word too.
  command = argv[0]
  if command not in COMMANDS and len(argv) > 1 and f"{argv[0]} {argv[1]}" in COMMANDS:
    command, argv = f"{argv[0]} {argv[1]}", argv[2:]
  elif command in COMMANDS:
    argv = argv[1:]
  else:
    parser.error(f"unknown command {' '.join(argv[:2])!r}; commands: {', '.join(names)}")

  with quiet_startup(verbose):
    func = _resolve(command)  # importing registers the command's configurables with gin
  if any(a in HELP_FLAGS for a in argv):
    print(command_help(command, func))
    return 0
  files, bindings, search_paths, rest = _split_gin_flags(argv)
  # A bare --NAME names a preset gin file of the command (`safejax demo --quick`) or switches on a
  # boolean parameter of it.
  presets = PRESETS.get(command, {})
  switches = {p.name for p in inspect.signature(func).parameters.values() if isinstance(p.default, bool)}
  preset_files = [presets[a[2:]] for a in rest if a.startswith("--") and a[2:] in presets]
  kwargs = {a[2:]: True for a in rest if a.startswith("--") and a[2:] in switches}
  unknown_flags = [a for a in rest if a.startswith("--") and a[2:] not in switches | set(presets)]
  if unknown_flags:
    parser.error(f"unknown flags {unknown_flags}: configure with --gin.NAME=VALUE")
  rest = [a for a in rest if not a.startswith("--")]
  # safejax speaks at INFO; libraries (orbax, absl, tf) only when something is wrong.
  logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  logging.getLogger("safejax").setLevel(logging.INFO)
  try:
    parse_gin([*DEFAULT_GIN_FILES.get(command, ()), *preset_files, *files], bindings, search_paths)
  except (ValueError, KeyError, IOError) as e:
    raise SystemExit(f"safejax {command}: bad gin configuration: {e}{renamed_hint(bindings)}") from None
  check_bindings(command, func, bindings, supplied=kwargs)
  check_values(command, func)
  if rest:
    if "inputs" not in inspect.signature(func).parameters:
      parser.error(f"safejax {command} takes no positional inputs, got {rest}")
    kwargs["inputs"] = rest
  try:
    result = func(**kwargs)
  except RuntimeError as e:  # a configurable called during the run, its REQUIRED binding unset
    if not str(e).startswith("Required bindings for"):
      raise
    raise SystemExit(f"safejax {command}: missing gin binding: {str(e).splitlines()[0]}") from None
  except Exception as e:  # noqa: BLE001  sorted below: the user's to fix, or the program's
    # Input the user must fix (a value, a path the system refused): one line.
    if verbose or not _users_to_fix(e):
      raise
    raise SystemExit(f"safejax {command}: {str(e).strip().splitlines()[0]}") from None
  return result if isinstance(result, int) else 0


def _users_to_fix(error: Exception) -> bool:
  """A UserError, or a path the system (or TensorFlow's file layer) refused or cannot find."""
  if isinstance(error, UserError):
    return True
  if isinstance(error, OSError):
    return bool(_OS_ERROR.match(str(error)))
  tf = sys.modules.get("tensorflow")
  return tf is not None and isinstance(error, (tf.errors.NotFoundError, tf.errors.PermissionDeniedError))


# How the system words a refused path ("[Errno 13] Permission denied: '/data/m'"). Matched on the
# message: gin re-raises a command's exception as a copy that keeps its text, not its errno.
_OS_ERROR = re.compile(r"\[Errno \d+\] ")


def _groups() -> set[str]:
  """The first words of two-word commands ("classify" of "classify train")."""
  return {name.split()[0] for name in COMMANDS if " " in name}


def group_help(group: str) -> str:
  """`safejax GROUP --help`: the group's subcommands, each with its docstring's first line."""
  commands = sorted(name for name in COMMANDS if name.split()[0] == group)
  width = max(map(len, commands))
  lines = [f"usage: safejax {group} {{{','.join(c.split()[1] for c in commands)}}} ...", "", "commands:"]
  for name in commands:
    summary = (inspect.getdoc(_resolve(name)) or "").splitlines()
    lines.append(f"  {name:{width}}  {summary[0] if summary else ''}")
  lines.append(f"\n`safejax {group} COMMAND --help` describes one.")
  return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Checks before compute, per-command help and a quiet start-up (issue 13).

def _macro_references() -> set[str]:
  """The macros referenced (%NAME) by the parsed configuration, files and bindings alike."""
  return set(re.findall(r"%([A-Za-z_][\w.]*)", gin.config_str()))


def check_bindings(command: str, func, bindings: Sequence[str], supplied: Sequence[str] = ()) -> None:
  """Fails (SystemExit, one line) before anything is computed when

    * a macro set with --gin.NAME=VALUE is referenced by no parsed file or binding (a typo such
      as --gin.TRAIN_STEP=3 for TRAIN_STEPS would otherwise be accepted and ignored);
    * a referenced macro is unset or still %gin.REQUIRED (e.g. MODEL_DIR of runs/pretrain.gin);
    * a parameter of the command marked gin.REQUIRED is neither bound nor `supplied`.
  """
  references = _macro_references()
  macros = [b.split("=", 1)[0].strip() for b in bindings]
  macros = [m for m in macros if "." not in m and "/" not in m]
  unused = [m for m in macros if m not in references]
  if unused:
    close = difflib.get_close_matches(unused[0], sorted(references - {"gin.REQUIRED"}), n=1)
    raise SystemExit(f"safejax {command}: --gin.{unused[0]}=... sets a macro that nothing uses: no parsed file or "
                     f"binding references %{unused[0]}" + (f" (did you mean {close[0]}?)" if close else " (misspelled?)")
                     + (f"; also unused: {', '.join(unused[1:])}" if unused[1:] else ""))
  missing = []
  for name in sorted(references - {"gin.REQUIRED"}):
    try:
      value = gin.query_parameter(f"%{name}")
    except ValueError:
      missing.append(f"--gin.{name}=... (referenced as %{name}, never set)")
      continue
    if repr(value) == "%gin.REQUIRED":
      missing.append(f"--gin.{name}=...")
  selector = func.__name__
  for p in inspect.signature(func).parameters.values():
    if p.default is gin.REQUIRED and p.name not in supplied and p.name != "inputs":
      try:
        gin.query_parameter(f"{selector}.{p.name}")
      except ValueError:
        missing.append(f"--gin.{selector}.{p.name}=...")
  if missing:
    raise SystemExit(f"safejax {command}: missing required gin binding(s): {', '.join(missing)} "
                     f"(see `safejax {command} --help`)")


def _bound_value(selector: str) -> tuple[bool, object, str]:
  """(bound?, value, how it was set) of `selector` ("train.batch_size"), macros (%NAME)
  followed to what they are bound to; a value that is itself a configurable reference is
  returned as the reference."""
  try:
    value = gin.query_parameter(selector)
  except ValueError:
    return False, None, ""
  via = ""
  for _ in range(32):  # macros may name macros; a cycle is gin's to report
    if not (isinstance(value, gin.config.ConfigurableReference) and value.configurable.name == "macro"):
      break
    macro = "/".join(value.scopes)
    via = via or f" (via %{macro})"
    try:
      value = gin.query_parameter(f"%{macro}")
    except ValueError:
      return False, None, ""
  return True, value, via


def _type_name(hint) -> str:
  return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _mismatch(value, hint) -> bool:
  """Whether `value` certainly does not fit a parameter annotated `hint`. Plain types only (int,
  float, str, bool, None, their unions, sequences and mappings); anything else (classes,
  configurable references, typing constructs not listed) is left to the code that uses it."""
  if isinstance(value, gin.config.ConfigurableReference) or hint is typing.Any:
    return False
  origin, args = typing.get_origin(hint), typing.get_args(hint)
  if origin in (typing.Union, types.UnionType):
    return all(_mismatch(value, arg) for arg in args)
  if hint is type(None):
    return value is not None
  if hint is bool:
    return not isinstance(value, bool)
  if hint in (int, float):  # bools are ints to Python, never to a user; an int is a fine float
    allowed = int if hint is int else (int, float)
    return isinstance(value, bool) or not isinstance(value, allowed)
  if hint is str:
    return not isinstance(value, str)
  if origin in (tuple, list, Sequence):
    if not isinstance(value, (tuple, list)):
      return True
    element = args[0] if args and (origin is not tuple or (len(args) == 2 and args[1] is Ellipsis)) else None
    return element is not None and any(_mismatch(v, element) for v in value)
  if origin in (dict, Mapping):
    return not isinstance(value, dict)
  return False


def check_values(command: str, func) -> None:
  """Fails (SystemExit, one line naming the binding) before anything is computed when a bound
  value has the wrong type for its parameter: `--gin.TRAIN_STEPS="'abc'"` for an int,
  `--gin.ModelConfig.num_layers=2.5`. Checks the command's parameters and the fields of the
  config classes it takes (`ModelConfig`, `OptimizerConfig`, ...); ranges are each class's and
  function's own to check."""
  targets = []
  for p in inspect.signature(func).parameters.values():
    if p.name == "inputs" or p.kind == p.VAR_KEYWORD:
      continue
    targets.append((func.__name__, p.name, typing.get_type_hints(inspect.unwrap(func)).get(p.name, typing.Any)))
    cls = _config_class(func, p)
    if cls is not None:
      hints = typing.get_type_hints(cls)
      targets += [(cls.__name__, f.name, hints.get(f.name, typing.Any)) for f in dataclasses.fields(cls)]
  for owner, name, hint in targets:
    bound, value, via = _bound_value(f"{owner}.{name}")
    if bound and _mismatch(value, hint):
      raise SystemExit(f"safejax {command}: {owner}.{name}{via} = {value!r}: expected {_type_name(hint)}, "
                       f"got {type(value).__name__}")


def _short(value, limit: int = 100) -> str:
  text = "REQUIRED" if value is gin.REQUIRED else repr(value)
  if " object at 0x" in text:  # a default repr: the class is what matters
    text = f"{type(value).__name__}()"
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _config_class(func, p: inspect.Parameter) -> type | None:
  """The gin-configurable dataclass a parameter takes (`x: C = C()` or `x: C | None = None`), or None."""
  if dataclasses.is_dataclass(p.default):
    cls = type(p.default)
  else:
    try:
      hint = typing.get_type_hints(inspect.unwrap(func)).get(p.name)
    except Exception:  # noqa: BLE001  an annotation that does not resolve: no class to show
      return None
    classes = [c for c in (typing.get_args(hint) or (hint,)) if isinstance(c, type) and dataclasses.is_dataclass(c)]
    if len(classes) != 1:
      return None
    cls = classes[0]
  try:
    gin.get_configurable(cls)
  except (ValueError, KeyError):
    return None
  return cls


def command_help(command: str, func) -> str:
  """`safejax COMMAND --help`: usage, the docstring, the gin parameters with their defaults (and
  those of the config classes they take), the switches, and an example."""
  params = [p for p in inspect.signature(func).parameters.values() if p.kind != p.VAR_KEYWORD]
  takes_inputs = any(p.name == "inputs" for p in params)
  switches = [p.name for p in params if isinstance(p.default, bool)]
  lines = [f"usage: safejax {command} [--gin_file=FILE ...] [--gin.NAME=VALUE ...] [--gin_search_paths=A,B]"
           + "".join(f" [--{name}]" for name in [*PRESETS.get(command, {}), *switches])
           + (" [INPUT ...]" if takes_inputs else "") + " [-v]",
           "", inspect.getdoc(func) or "", "",
           f"gin parameters (--gin.{func.__name__}.NAME=VALUE), with their defaults:"]
  classes = []
  for p in params:
    if p.name == "inputs":
      continue
    lines.append(f"  {func.__name__}.{p.name} = {_short(p.default)}")
    cls = _config_class(func, p)
    if cls is not None:
      classes.append(cls)
  for cls in classes:
    lines.append(f"{cls.__name__} (--gin.{cls.__name__}.NAME=VALUE):")
    for field in dataclasses.fields(cls):
      if field.default is not dataclasses.MISSING:
        default = field.default
      elif field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
      else:
        default = gin.REQUIRED
      lines.append(f"  {cls.__name__}.{field.name} = {_short(default)}")
  if switches:
    lines.append("switches: " + ", ".join(f"--{name}" for name in switches) + " (a bare flag sets it to True)")
  for name, path in PRESETS.get(command, {}).items():
    lines.append(f"preset: --{name} parses {path} (after the defaults, before your files and flags)")
  if takes_inputs:
    lines.append("positional INPUTs reach the command as `inputs`.")
  lines += ["", "example:", "  " + EXAMPLES.get(command, f"safejax {command} --gin_file=...")]
  return "\n".join(lines)


@contextlib.contextmanager
def quiet_startup(verbose: bool) -> Iterator[None]:
  """Keeps TensorFlow's, absl's and JAX's start-up lines off the console unless `verbose`.

  TensorFlow's C++ code logs through absl straight to file descriptor 2 as its libraries load
  ("Could not find cuda drivers", the oneDNN and CPU-feature notices), before any level set in
  Python applies; so TensorFlow is imported (with the command's module) while that descriptor
  points at a temporary file, which is replayed if the import fails. TF_CPP_MIN_LOG_LEVEL=3 (unless
  already set) quiets its later C++ lines (a failed cuInit probe); Python libraries' import-time
  log lines and warnings are dropped, and JAX's "falling back to CPU" notice is kept at ERROR.
  """
  if verbose:
    yield
    return
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.ERROR)
  root = logging.getLogger()
  level = root.level
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as sink:
    os.dup2(sink.fileno(), 2)
    root.setLevel(logging.ERROR)
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tensorflow  # noqa: F401  the loudest start-up, done here
        yield
    except BaseException:
      os.dup2(saved, 2)
      sink.seek(0)
      sys.stderr.write(sink.read().decode("utf-8", errors="replace"))
      raise
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      root.setLevel(level)


if __name__ == "__main__":
  sys.exit(main())
