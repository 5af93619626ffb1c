"""The demo's step cache: a finished step is reused only when nothing it reads has changed.

  cache = StepCache(root)
  corpus = cache.run("corpus", write_world_corpus, world=WorldConfig(seed=0), sizes=CorpusSizes())
  vocab = cache.run("vocab", train_vocab, pipeline=pipeline, vocab_size=4096)   # corpus.dir, .summary

A step is a function `work(out_dir, **inputs) -> summary` (a JSON-able dict). Its key is derived,
never listed by hand, from
  - the inputs, as given: numbers, strings, dataclasses (every field, recursively), other steps'
    results (by their keys, so a changed upstream step changes every step after it);
  - the code: `work` itself and the definitions of its module that it names, and every
    project module it reaches with what that module imports, directly or not (a change to the world,
    the trainer or the judges reruns the steps that run them; a change to the claims, which no step
    runs, reruns none), read as syntax trees without docstrings, so a comment, docstring or layout
    edit reruns nothing.
So a step depends on exactly what it is given: a setting no step receives cannot rerun anything,
and no string has to be added to a key to force a rerun after a change.

A step whose folder holds a DONE.json with its key is skipped. A folder left by another key (other
settings or code, or an interrupted run under them) is moved aside to `<name>.stale/` before the
step runs, so training never resumes from checkpoints made under other settings; an interrupted
run under the same key resumes in place (the trainer restores its newest checkpoint).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DONE = "DONE.json"
STARTED = "STARTED.json"
PROJECT_PACKAGES = ("safejax", "tasks")


@dataclasses.dataclass(frozen=True)
class StepResult:
  """A finished step: its folder, its key and its summary."""

  name: str
  dir: Path
  key: str
  summary: dict[str, Any]


def canonical(value: Any) -> Any:
  """A JSON-able form of a step input that is the same across runs and processes."""
  if isinstance(value, StepResult):
    return {"step": value.name, "key": value.key}
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return {"type": type(value).__qualname__,
            **{f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}}
  if isinstance(value, Mapping):
    return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
  if isinstance(value, (list, tuple)):
    return [canonical(v) for v in value]
  if isinstance(value, (set, frozenset)):
    return sorted(canonical(v) for v in value)
  if isinstance(value, Path):
    return str(value)
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if callable(value) and hasattr(value, "__qualname__"):
    return {"function": f"{value.__module__}.{value.__qualname__}"}
  if hasattr(value, "__dict__"):  # a plain object (a backend, a scorer by path): its class and state
    return {"type": type(value).__qualname__, **{k: canonical(v) for k, v in sorted(vars(value).items())}}
  raise TypeError(f"a step input of type {type(value).__name__} has no canonical form: {value!r}")


def _module_source(module: str) -> tuple[Path | None, str]:
  loaded = sys.modules.get(module)
  path = getattr(loaded, "__file__", None)
  if path is None:
    return None, ""
  return Path(path), Path(path).read_text(encoding="utf-8")


def _imported_from(package: str, node: ast.ImportFrom) -> str:
  """The absolute module name of `from ... import` in `package` (relative levels resolved)."""
  base = node.module or ""
  if node.level:
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
  return base


def _project_imports(module: str, source: str, is_package: bool) -> set[str]:
  """The project modules `module` imports anywhere in its source (lazy imports included)."""
  package = module if is_package else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = _imported_from(package, node)
      names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    else:
      continue
    found.update(n for n in names if n.split(".")[0] in PROJECT_PACKAGES)
  return found


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def code_text(source: str) -> str:
  """`source` as what it runs: its syntax tree, without docstrings, comments, line numbers or layout."""
  tree = ast.parse(source)
  for node in ast.walk(tree):
    if (isinstance(node, _DOCUMENTED) and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str)):
      node.body = node.body[1:] or [ast.Pass()]
  return ast.dump(tree)


@functools.cache
def code_fingerprint(module: str) -> str:
  """A hash of the code (`code_text`) of `module` and of every project module it imports, transitively."""
  import importlib

  digest, seen, todo = hashlib.sha256(), set(), [module]
  while todo:
    name = todo.pop()
    if name in seen:
      continue
    seen.add(name)
    try:
      importlib.import_module(name)
    except ImportError:  # `from package import attribute`: the attribute is no module
      continue
    path, source = _module_source(name)
    if path is None:
      continue
    digest.update(name.encode() + b"\0" + code_text(source).encode())
    todo += sorted(_project_imports(name, source, path.name == "__init__.py"))
  return digest.hexdigest()[:16]


def _module_names(module: str, tree: ast.Module) -> tuple[dict[str, ast.AST], dict[str, str]]:
  """A module's top-level definitions by name (functions, classes and assigned names, such as the
  world's phrase banks), and the project modules its names stand for."""
  defs: dict[str, ast.AST] = {}
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      defs[node.name] = node
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
        for name in ast.walk(target):
          if isinstance(name, ast.Name):
            defs[name.id] = node
  package = module.rpartition(".")[0]
  imported = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        imported[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
    elif isinstance(node, ast.ImportFrom):
      base = _imported_from(package, node)
      for alias in node.names:
        full = f"{base}.{alias.name}"
        imported[alias.asname or alias.name] = full if full in sys.modules else base
  return defs, {name: m for name, m in imported.items() if m.split(".")[0] in PROJECT_PACKAGES}


def work_code(work: Callable[..., Any], inputs: Mapping[str, Any] | None = None) -> tuple[list[str], list[str]]:
  """What a step runs, read from its module's source: the code text (`code_text`) of `work` and of
  the top-level definitions of its module that it names (functions, classes, constants),
  transitively, and the other project modules they name (their code counts whole, with what they
  import: `code_fingerprint`). Only
  what `work` reaches counts, so a step defined beside others in one module is not rerun by a
  change to their code or to what only they import. The classes of `inputs` count too: a step
  calls its config's methods without naming the class."""
  source = _module_source(work.__module__)[1]
  tree = ast.parse(source)
  defs, imported = _module_names(work.__module__, tree)
  texts, modules, todo = {}, set(), [work.__qualname__.split(".")[0]]
  for value in (inputs or {}).values():
    cls = type(value)
    if dataclasses.is_dataclass(value) and cls.__module__.split(".")[0] in PROJECT_PACKAGES:
      if cls.__module__ == work.__module__:
        todo.append(cls.__qualname__.split(".")[0])
      else:
        modules.add(cls.__module__)
  while todo:
    name = todo.pop()
    if name in texts or name not in defs:
      continue
    texts[name] = code_text(ast.unparse(defs[name]))
    for node in ast.walk(defs[name]):
      if isinstance(node, ast.Name):
        if node.id in defs:
          todo.append(node.id)
        elif node.id in imported:
          modules.add(imported[node.id])
  return [texts[k] for k in sorted(texts)], sorted(modules)


def step_key(work: Callable[..., Any], inputs: Mapping[str, Any]) -> str:
  """The key of running `work` on `inputs` (see the module docstring)."""
  texts, modules = work_code(work, inputs)
  text = json.dumps({"work": f"{work.__module__}.{work.__qualname__}", "code": texts,
                     "modules": {m: code_fingerprint(m) for m in modules}, "inputs": canonical(dict(inputs))},
                    sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


class StepCache:
  """Steps in folders under `root`, each run at most once per key."""

  def __init__(self, root: Path):
    self.root = Path(root)

  def done(self, name: str, key: str) -> dict[str, Any] | None:
    """The summary of step `name` finished under `key`, or None."""
    marker = self.root / name / DONE
    if marker.is_file():
      record = json.loads(marker.read_text())
      if record.get("key") == key:
        return record["summary"]
    return None

  def run(self, name: str, work: Callable[..., dict[str, Any]], **inputs: Any) -> StepResult:
    """Runs `work(out_dir, **inputs)` in `root/name` unless it finished there under the same key."""
    key = step_key(work, inputs)
    out = self.root / name
    summary = self.done(name, key)
    if summary is not None:
      log.info("step %s: done earlier under key %s (%s), skipped", name, key, out)
      return StepResult(name, out, key, summary)
    started = out / STARTED
    if out.exists() and not (started.is_file() and json.loads(started.read_text()).get("key") == key):
      stale = self.root / f"{name}.stale"
      if stale.exists():
        shutil.rmtree(stale)
      out.rename(stale)
      log.info("step %s: its folder was made under other settings or code; moved aside to %s", name, stale)
    out.mkdir(parents=True, exist_ok=True)
    started.write_text(json.dumps({"key": key, "inputs": canonical(inputs)}, indent=2, default=str))
    log.info("step %s: running (key %s)", name, key)
    start = time.perf_counter()
    summary = dict(work(out, **inputs))
    summary["seconds"] = round(time.perf_counter() - start, 1)
    log.info("step %s: %.0f s", name, summary["seconds"])
    (out / DONE).write_text(json.dumps({"key": key, "summary": summary}, indent=2, default=str))
    return StepResult(name, out, key, summary)
