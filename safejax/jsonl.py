"""JSON lines files: read and write lists of records (the demo's corpus, judges' labels, reports).

Shared ground: the data pipeline's sources read untrusted jsonl with their own validation
(`safejax.data.sources`); these two are for files this project writes itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
  """Every record of a jsonl file this project wrote (blank lines skipped)."""
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def write_jsonl(records: Iterable[Mapping[str, Any]], path: str | Path) -> int:
  """Writes records as JSON lines (parent folders made); returns how many."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  n = 0
  with open(path, "w", encoding="utf-8") as f:
    for record in records:
      f.write(json.dumps(record, ensure_ascii=False) + "\n")
      n += 1
  return n
