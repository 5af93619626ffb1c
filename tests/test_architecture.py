"""The layout holds: imports follow the data flow, and every name the docs point at exists.

STAGES is the table of ../shared/DESIGN.md's flow, as data: a module may import its own stage,
earlier stages and the shared ground, never a later stage. Every import counts, including those
inside functions (lazy imports are how upstream dependencies used to hide).
"""

import ast
import importlib
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (stage, module-name patterns), in the order data flows. A module takes the first stage that matches.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ground", ("safejax", "safejax.vocab", "safejax.chat_template", "safejax.stats", "safejax.partitioning",
                "safejax.model*", "safejax.checkpoints")),
    ("sources", ("safejax.data", "safejax.data.records", "safejax.data.sources", "safejax.data.shards")),
    ("rubric", ("safejax.safety.rubric",)),
    ("backends", ("safejax.backends", "safejax.backends.base", "safejax.backends.openai", "safejax.backends.template")),
    ("safety", ("safejax.safety*",)),
    ("routing", ("safejax.data.scoring", "safejax.data.routing")),
    ("generators", ("safejax.data.generators",)),
    ("tagging", ("safejax.data.tagging",)),
    ("pipeline", ("safejax.data.pipeline", "safejax.data.manifest", "safejax.data.report_card")),
    ("tasks", ("tasks*", "safejax.posttrain")),
    ("train", ("safejax.train", "safejax.hf_interop")),
    ("decoding", ("safejax.decoding*",)),
    ("local backend", ("safejax.backends.local",)),
    ("evaluation", ("safejax.evaluation*",)),
    ("serve", ("safejax.serve*",)),
    ("demo", ("safejax.demo*",)),
    ("cli", ("safejax.cli",)),
)


def _matches(module: str, pattern: str) -> bool:
  if pattern.endswith("*"):
    base = pattern[:-1]
    return module == base or module.startswith(base + ".")
  return module == pattern


def stage_of(module: str) -> int:
  for index, (_, patterns) in enumerate(STAGES):
    if any(_matches(module, p) for p in patterns):
      return index
  raise KeyError(f"{module} is in no stage of STAGES: add it where it belongs in the flow")


def project_modules() -> dict[str, Path]:
  modules = {}
  for path in sorted([*ROOT.glob("safejax/**/*.py"), *ROOT.glob("tasks/**/*.py")]):
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    modules[name] = path
  return modules


def imports_of(module: str, path: Path) -> set[str]:
  """Every project module `module` imports, wherever the import statement sits."""
  found = set()
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
      # `from safejax import train` imports the module safejax.train.
      names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    else:
      continue
    for name in names:
      if name.split(".")[0] in ("safejax", "tasks"):
        found.add(name)
  return found


def test_every_module_has_a_stage():
  for module in project_modules():
    stage_of(module)


def test_imports_follow_the_data_flow():
  modules = project_modules()
  violations = []
  for module, path in modules.items():
    own = stage_of(module)
    for imported in imports_of(module, path):
      # Resolve to the longest prefix that is a project module (`safejax.train.train` -> safejax.train).
      target = imported
      while target not in modules and "." in target:
        target = target.rpartition(".")[0]
      if target not in modules or target == module:
        continue
      theirs = stage_of(target)
      ground = theirs == 0
      if own == 0 and not ground:
        violations.append(f"{module} (shared ground) imports {target} ({STAGES[theirs][0]})")
      elif theirs > own:
        violations.append(f"{module} ({STAGES[own][0]}) imports {target} ({STAGES[theirs][0]}), a later stage")
  assert not violations, "\n".join(violations)


def test_the_stage_check_catches_an_upstream_import(tmp_path):
  bad = tmp_path / "routing.py"
  bad.write_text("def f():\n  from safejax.evaluation import metrics\n")
  assert "safejax.evaluation" in imports_of("safejax.data.routing", bad)
  assert stage_of("safejax.evaluation.metrics") > stage_of("safejax.data.routing")


# ------------------------------------------------------------------------------------------------
# Names the docs point at.


def _doc_files() -> list[Path]:
  files = [ROOT / "README.md", *ROOT.glob("tpu_scripts/*.md"), *ROOT.glob("safejax/**/*.py"), *ROOT.glob("tasks/*.py"),
           *ROOT.glob("gin/**/*.gin"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("notebooks/*.ipynb")]
  return [f for f in files if f.is_file()]


def _doc_text(path: Path) -> str:
  """What a reader sees as documentation: for Python, docstrings and comments; else the whole file."""
  text = path.read_text()
  if path.suffix != ".py":
    return text
  parts = [node.value.value for node in ast.walk(ast.parse(text))
           if isinstance(node, ast.Expr) and isinstance(getattr(node, "value", None), ast.Constant)
           and isinstance(node.value.value, str)]
  parts += [tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline) if tok.type == tokenize.COMMENT]
  return "\n".join(parts)


def _gin_exists(name: str) -> bool:
  name = name.removeprefix("gin/")
  return (ROOT / "gin" / name).is_file() or (ROOT / name).is_file()


def test_every_gin_file_named_in_the_docs_exists():
  missing = []
  for path in _doc_files():
    for match in re.finditer(r"(?:--gin_file=|include ')?\b((?:gin/)?(?:runs|models|pipeline|classify)/[\w./-]+?\.gin)\b",
                             _doc_text(path)):
      if not _gin_exists(match.group(1)):
        missing.append(f"{path.relative_to(ROOT)}: {match.group(1)}")
  assert not missing, "\n".join(missing)


def test_every_command_named_in_the_docs_exists():
  from safejax.cli import COMMANDS

  first_words = {c.split()[0] for c in COMMANDS}
  missing = []
  for path in _doc_files():
    text = _doc_text(path)
    # Command lines (`safejax demo ...` in backticks, or a line that starts with it).
    for match in re.finditer(r"(?:`|^[ \t]*|\$ )safejax ([a-z][a-z-]*)(?: ([a-z]+))?(?=[\s`'\"|]|$)", text, re.M):
      word, second = match.groups()
      if word not in first_words:
        missing.append(f"{path.relative_to(ROOT)}: safejax {word}")
      elif second and word not in COMMANDS and f"{word} {second}" not in COMMANDS:
        missing.append(f"{path.relative_to(ROOT)}: safejax {word} {second}")
  assert not missing, "\n".join(missing)


def _resolves(dotted: str) -> bool:
  parts = dotted.split(".")
  for cut in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:cut]))
    except ModuleNotFoundError:
      continue
    try:
      for attr in parts[cut:]:
        obj = getattr(obj, attr)
    except AttributeError:
      return False
    return True
  return False


def test_every_safejax_name_in_the_docs_resolves():
  """`safejax.x.y` in README, docstrings, comments and gin files names a module or attribute that exists."""
  names = {}
  for path in _doc_files():
    for match in re.finditer(r"\b(?:safejax|tasks)(?:\.[A-Za-z_][A-Za-z0-9_]*)+", _doc_text(path)):
      dotted = match.group(0).rstrip(".")
      if dotted.endswith((".py", ".gin", ".md", ".json")):
        continue
      names.setdefault(dotted, path.relative_to(ROOT))
  missing = [f"{where}: {name}" for name, where in sorted(names.items()) if not _resolves(name)]
  assert not missing, "\n".join(missing)


@pytest.mark.parametrize("pattern", [r"\b((?:tests|benchmarks|tpu_scripts|notebooks)/[\w./-]+\.(?:py|sh|ipynb|md))\b"])
def test_every_file_named_in_the_docs_exists(pattern):
  missing = []
  for path in _doc_files():
    for match in re.finditer(pattern, _doc_text(path)):
      if not (ROOT / match.group(1)).is_file():
        missing.append(f"{path.relative_to(ROOT)}: {match.group(1)}")
  assert not missing, "\n".join(missing)


def test_the_reference_checks_catch_stale_names():
  assert not _resolves("safejax.partitioning.LOGICAL_RULES") and _resolves("safejax.partitioning.DEFAULT_RULES")
  assert not _gin_exists("runs/pretrain_demo.gin") and _gin_exists("runs/pretrain.gin")
