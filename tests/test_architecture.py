"""The layout holds: imports follow the data flow, and every name the docs point at exists.

LAYERS is the table of README.md's layout picture, as data: a module may import its own layer,
earlier layers and the shared ground, never a later layer. Every import counts: those inside
functions (lazy imports are how upstream dependencies used to hide) and the project modules named
by string where a module imports by name (`importlib.import_module`, "module:attribute" tables).
No module imports another's private (`_`) names.
"""

import ast
import importlib
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (layer, module-name patterns), in the order data flows: one line per layer of README.md's
# picture, a folder (or the one module) each. A module takes the first layer that matches.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ground", ("safejax", "safejax.vocab*", "safejax.chat_template", "safejax.generation", "safejax.text", "safejax.jsonl",
                "safejax.stats", "safejax.partitioning", "safejax.model*", "safejax.checkpoints")),
    ("safety", ("safejax.safety*",)),
    ("backends", ("safejax.backends*",)),
    ("data", ("safejax.data*",)),
    ("tasks", ("tasks*", "safejax.posttrain")),
    ("train", ("safejax.train", "safejax.hf_interop")),
    ("decoding", ("safejax.decoding*",)),
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


def layer_of(module: str) -> int:
  for index, (_, patterns) in enumerate(LAYERS):
    if any(_matches(module, p) for p in patterns):
      return index
  raise KeyError(f"{module} is in no layer of LAYERS: add it where it belongs in the flow")


def project_modules() -> dict[str, Path]:
  modules = {}
  for path in sorted([*ROOT.glob("safejax/**/*.py"), *ROOT.glob("tasks/**/*.py")]):
    parts = path.relative_to(ROOT).with_suffix("").parts
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    modules[name] = path
  return modules


_MODULE_STRING = re.compile(r"^((?:safejax|tasks)(?:\.[A-Za-z_]\w*)*)(?::[A-Za-z_]\w*)?$")


def imports_of(module: str, path: Path) -> set[str]:
  """Every project module `module` imports, wherever the import statement sits, and, where it
  imports by name (`importlib.import_module`), every project module a string of it names."""
  found = set()
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  tree = ast.parse(path.read_text())
  if any(isinstance(node, ast.Attribute) and node.attr == "import_module" for node in ast.walk(tree)):
    for node in ast.walk(tree):
      if isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_STRING.match(node.value):
        found.add(_MODULE_STRING.match(node.value).group(1))
  for node in ast.walk(tree):
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


def test_every_module_has_a_layer():
  for module in project_modules():
    layer_of(module)


def test_imports_follow_the_data_flow():
  modules = project_modules()
  violations = []
  for module, path in modules.items():
    own = layer_of(module)
    for imported in imports_of(module, path):
      # Resolve to the longest prefix that is a project module (`safejax.train.train` -> safejax.train).
      target = imported
      while target not in modules and "." in target:
        target = target.rpartition(".")[0]
      if target not in modules or target == module:
        continue
      theirs = layer_of(target)
      ground = theirs == 0
      if own == 0 and not ground:
        violations.append(f"{module} (shared ground) imports {target} ({LAYERS[theirs][0]})")
      elif theirs > own:
        violations.append(f"{module} ({LAYERS[own][0]}) imports {target} ({LAYERS[theirs][0]}), a later layer")
  assert not violations, "\n".join(violations)


def test_the_layer_check_catches_an_upstream_import(tmp_path):
  bad = tmp_path / "routing.py"
  bad.write_text("def f():\n  from safejax.evaluation import metrics\n")
  assert "safejax.evaluation" in imports_of("safejax.data.routing", bad)
  assert layer_of("safejax.evaluation.metrics") > layer_of("safejax.data.routing")
  by_name = tmp_path / "scoring.py"
  by_name.write_text("import importlib\nKINDS = {'x': 'safejax.serve.app:make_app'}\n"
                     "def f(k):\n  return importlib.import_module(KINDS[k].split(':')[0])\n")
  assert "safejax.serve.app" in imports_of("safejax.data.scoring", by_name)


def test_the_layers_are_the_readmes_picture():
  """README.md's layout picture and LAYERS agree: each "shared:" line is ground, each numbered line
  sits in the layer of its number (in order), every layer has a line, and the CLI comes last."""
  readme = (ROOT / "README.md").read_text()
  picture = readme[readme.index("## Layout"):]
  picture = picture[picture.index("```") + 3:]
  picture = picture[: picture.index("```")]
  lines = re.findall(r"^((?:safejax|tasks)/[\w/.]*)\s+(\d+|shared:|the `safejax` command)", picture, re.M)
  assert lines, "no layout picture in README.md"
  numbers = []
  for path, label in lines:
    module = path.rstrip("/").removesuffix(".py").replace("/", ".")
    layer = layer_of(module)
    if label == "shared:":
      assert layer == 0, f"README calls {path} shared, LAYERS puts it in {LAYERS[layer][0]}"
    elif label.isdigit():
      assert layer == int(label), f"README numbers {path} {label}, LAYERS puts it in layer {layer} ({LAYERS[layer][0]})"
      numbers.append(int(label))
    else:
      assert layer == len(LAYERS) - 1
  assert numbers == sorted(numbers) and set(numbers) == set(range(1, len(LAYERS) - 1))


def test_no_module_imports_another_modules_private_names():
  found = []
  for module, path in project_modules().items():
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("safejax", "tasks"):
        found += [f"{module}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
  assert not found, "\n".join(found)


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


def _package_docstrings() -> dict[Path, str]:
  return {path: ast.get_docstring(ast.parse(path.read_text())) or "" for path in ROOT.glob("safejax/**/__init__.py")}


def test_every_module_a_package_docstring_lists_exists():
  """A package docstring's table of its modules ("  name.py   what it holds") names real modules."""
  missing = []
  for path, doc in _package_docstrings().items():
    for name in re.findall(r"^  ([a-z_]+)(?:\.py)?\s{2,}\S", doc, re.M):
      if not ((path.parent / f"{name}.py").is_file() or (path.parent / name).is_dir()):
        missing.append(f"{path.relative_to(ROOT)}: {name}")
  assert not missing, "\n".join(missing)


FILE_SUFFIXES = frozenset({"py", "md", "json", "jsonl", "png", "gin", "model", "safetensors", "txt", "csv", "gz"})


def _resolves_on_a_class(dotted: str) -> bool:
  """`module.attribute` where the attribute is one of a class's of that module (`vocab.token_id`
  written of a vocabulary object)."""
  module_name, _, attribute = dotted.rpartition(".")
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError:
    return False
  return any(isinstance(obj, type) and hasattr(obj, attribute) for obj in vars(module).values())


def _relative_candidates(path: Path, dotted: str) -> list[str]:
  """Where `a.b` written in `path` may point: a module of the same package, or of safejax."""
  package = ".".join(path.relative_to(ROOT).parent.parts)
  first = dotted.split(".")[0]
  candidates = []
  for base in (package, "safejax"):
    folder = ROOT.joinpath(*base.split("."))
    if (folder / f"{first}.py").is_file() or (folder / first / "__init__.py").is_file():
      candidates.append(f"{base}.{dotted}")
  return candidates


def test_every_relative_name_in_docstrings_resolves():
  """`module.attribute` in backticks in a docstring or comment, where `module` is a module of the
  file's package or of safejax (`ladder.choose_threshold`, `prompt_sets.BENCHMARKS`), exists."""
  missing = []
  for path in ROOT.glob("safejax/**/*.py"):
    for match in re.finditer(r"`([a-z_][a-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+)(?:\(|`)", _doc_text(path)):
      dotted = match.group(1)
      if dotted.startswith(("safejax.", "tasks.")) or dotted.rsplit(".", 1)[-1] in FILE_SUFFIXES:
        continue  # full names are checked above; file names are not Python names
      candidates = _relative_candidates(path, dotted)
      if candidates and not any(_resolves(c) or _resolves_on_a_class(c) for c in candidates):
        missing.append(f"{path.relative_to(ROOT)}: {dotted}")
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
  run = ROOT / "safejax/evaluation/run.py"
  assert _relative_candidates(run, "benchmarks.BENCHMARKS") == []  # no module `benchmarks` there: not checkable
  assert [c for c in _relative_candidates(run, "ladder.choose_tau") if _resolves(c)] == []  # a stale attribute
  assert any(_resolves(c) for c in _relative_candidates(run, "ladder.choose_threshold"))
  assert not _gin_exists("runs/pretrain_demo.gin") and _gin_exists("runs/pretrain.gin")
