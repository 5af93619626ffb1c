"""Conversation data for the paper's post-training stages (PAPER.md section 5).

  instruction tuning          safety and helpfulness: refusals of harmful requests plus helpful
                              answers to benign ones (the paper: UltraChat + WildGuardMix +
                              WildJailbreak, none of which is reachable here)
  benign fine-tuning attack   supervised training on harmless task data only (the paper: GSM8K),
                              which erodes the safety a model was tuned into

Every builder returns records {"messages": [{"role", "content"}, ...]} ending with the assistant's
reply: the format `tasks.register_chat_task` trains on. Sources:
  * `from_hh_rlhf`: HH-RLHF harmless conversations, the preferred ("chosen") reply as the target.
  * `from_choice_task`: a multiple-choice file (the capability layout: query, choices, gold) as
    question -> correct answer. Use a set that is NOT evaluated (commonsense_qa here), so the
    attack does not train on the capability benchmarks.
  * `from_refuseweb`: a pipeline run's RefuseWeb dialogues as chat turns.
  * `from_qa_documents`: question/answer pages of a corpus ("Q: ... A: ...") as chat turns.
A record that cannot be converted is skipped and counted; `build_sft_data` prints the counts.
`tag_requests` marks a share of the instruction data with harm tags in its harmful requests (the
paper tags 10 % of its instruction-tuning mixture).

  safejax sft-data --gin.build_sft_data.output_file="'/tmp/benign.jsonl'" \
    --gin.build_sft_data.choice_files="['../shared/data/capability/mc_evals/commonsense_qa.jsonl']"
"""

from __future__ import annotations

import collections
import gzip
import json
import random
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import gin
import numpy as np

from safejax.data.tagging import tag_text
from safejax.vocab import HARM_TAG, RejectedText, sanitize_text

_TURN_RE = re.compile(r"\n\n(Human|Assistant):")
_QA_RE = re.compile(r"(?:^|\n)(?:Q|Question|Reader question):\s*(?P<q>[^\n]+)\n(?:A|Answer|Our answer):\s*(?P<a>[^\n]+)")
_LETTERED = re.compile(r"\nChoices:\n(?P<choices>(?:[A-Z]\. [^\n]*\n?)+)")


def _open(path: str | Path):
  path = str(path)
  return gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")


def _jsonl(path: str | Path, counts: collections.Counter) -> Iterator[dict]:
  """The JSON objects of a jsonl file; a line that is not one is counted as skipped, by file."""
  with _open(path) as f:
    for line in f:
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except (json.JSONDecodeError, RecursionError):
        record = None
      if isinstance(record, dict):
        yield record
      else:
        counts[f"{Path(path).name}: skipped, not a JSON object"] += 1


def _clean(text: str) -> str | None:
  """Untrusted text through the one sanitiser; None when it cannot be used (not valid Unicode)."""
  try:
    return sanitize_text(text)[0].strip()
  except RejectedText:
    return None


def conversation(turns: Sequence[tuple[str, str]]) -> dict | None:
  """{"messages": ...} from (role, text) turns, trimmed to end with the assistant; None if unusable."""
  messages = [{"role": role, "content": _clean(text)} for role, text in turns]
  if any(m["content"] is None for m in messages):
    return None
  while messages and messages[-1]["role"] != "assistant":
    messages.pop()
  if len(messages) < 2 or any(not m["content"] for m in messages) or messages[0]["role"] != "user":
    return None
  return {"messages": messages}


def from_hh_rlhf(path: str | Path, counts: collections.Counter) -> Iterator[dict]:
  """HH-RLHF harmless dialogues, the chosen reply as the last assistant turn."""
  for record in _jsonl(path, counts):
    parts = _TURN_RE.split(record["chosen"])
    turns = [("user" if parts[i] == "Human" else "assistant", parts[i + 1]) for i in range(1, len(parts) - 1, 2)]
    item = conversation(turns)
    counts["hh_rlhf: " + ("kept" if item else "skipped, no user-then-assistant turns")] += 1
    if item:
      yield item


def from_choice_task(path: str | Path, counts: collections.Counter) -> Iterator[dict]:
  """Multiple-choice items as question -> the correct answer's text.

  Lettered items ("Choices:\\nA. ...", choices ["A", "B", ...]) answer with the letter's text.
  """
  for record in _jsonl(path, counts):
    query, choices, gold = record["query"], record["choices"], record["gold"]
    lettered = _LETTERED.search(query)
    if lettered:
      options = [line[3:].strip() for line in lettered["choices"].strip().splitlines()]
      answer = options[gold] if gold < len(options) else None
      question = query[:lettered.start()]
    else:
      answer, question = choices[gold], query
    question = re.sub(r"^Question:\s*", "", question.replace("\nAnswer:", "")).strip()
    item = conversation([("user", question), ("assistant", answer or "")])
    counts[f"{Path(path).stem}: " + ("kept" if item else "skipped, empty question or answer")] += 1
    if item:
      yield item


def from_refuseweb(records: Iterable[dict], counts: collections.Counter) -> Iterator[dict]:
  """A pipeline run's RefuseWeb records ({"turns": [{"role", "text"}]}) as conversations."""
  for record in records:
    item = conversation([(t["role"], t["text"]) for t in record["turns"]])
    counts["refuseweb: " + ("kept" if item else "skipped, unusable turns")] += 1
    if item:
      yield item


def from_qa_documents(records: Iterable[dict], counts: collections.Counter) -> Iterator[dict]:
  """Question/answer pairs found in documents ("Q: ...\\nA: ..." and the like)."""
  for record in records:
    for match in _QA_RE.finditer(record["text"]):
      item = conversation([("user", match["q"]), ("assistant", match["a"])])
      counts["qa_documents: " + ("kept" if item else "skipped")] += 1
      if item:
        yield item


def tag_requests(conversations: Sequence[dict], count: int, *, p: float, seed: int = 0) -> list[dict]:
  """Harm tags in the user turns of `count` of `conversations` (chosen at random, seeded), which
  must all be harmful requests (e.g. `from_refuseweb`'s): each word but a turn's first is preceded
  by the tag with probability p (pretraining's, `PipelineConfig.tag_p`; `safejax.data.tagging.tag_text`), and a
  conversation drawn without any tag gets one at a random position, so `count` conversations
  carry tags. Tagged records are marked "harm_tagged": true, which `tasks.chat` honours; the
  others are returned unchanged. Returns all conversations, in their order.
  """
  if not 0 <= count <= len(conversations):
    raise ValueError(f"cannot tag {count} of {len(conversations)} conversations")
  chosen = set(random.Random(seed).sample(range(len(conversations)), count))
  rng = np.random.default_rng(seed)
  out = []
  for i, record in enumerate(conversations):
    if i not in chosen:
      out.append(record)
      continue
    messages = [dict(m) for m in record["messages"]]
    users = [m for m in messages if m["role"] == "user"]
    for m in users:
      m["content"] = tag_text(m["content"], [[0, len(m["content"]), 1]], rng, p=p, level=1)[0]
    if not any(HARM_TAG in m["content"] for m in users):
      m = users[int(rng.integers(len(users)))]
      words = m["content"].split(" ")
      if len(words) > 1:
        at = int(rng.integers(1, len(words)))
        m["content"] = " ".join(words[:at - 1] + [words[at - 1] + HARM_TAG] + words[at:])
      else:
        m["content"] += HARM_TAG
    out.append({**record, "messages": messages, "harm_tagged": True})
  return out


def write_posttrain_data(out: str | Path, refusals: Sequence[dict], helpful: Sequence[dict], benign: Sequence[dict],
                         *, tagged_share: float, tag_p: float, seed: int, counts: collections.Counter) -> dict:
  """instruct.jsonl (as many refusals as helpful answers, `tagged_share` of the whole with harm
  tags in the refused requests, `tag_requests`) and benign.jsonl (the attack's helpful chats) in `out`.
  Returns the record counts and `counts` (what each source kept and skipped)."""
  n = min(len(refusals), len(helpful))
  tagged = min(n, round(tagged_share * 2 * n))
  counts["instruct: refusals with harm tags"] = tagged
  refusals = tag_requests(refusals[:n], tagged, p=tag_p, seed=seed)
  out = Path(out)
  return {"instruct": write_conversations(list(refusals) + list(helpful[:n]), out / "instruct.jsonl", seed=seed),
          "benign": write_conversations(benign, out / "benign.jsonl", seed=seed), "counts": dict(counts)}


def write_conversations(items: Iterable[dict], output_file: str | Path, *, limit: int | None = None,
                        seed: int = 0) -> int:
  """Shuffles (seeded), keeps at most `limit`, writes jsonl; returns the number written."""
  items = list(items)
  random.Random(seed).shuffle(items)
  items = items[:limit] if limit is not None else items
  Path(output_file).parent.mkdir(parents=True, exist_ok=True)
  with open(output_file, "w", encoding="utf-8") as f:
    for item in items:
      f.write(json.dumps(item, ensure_ascii=False) + "\n")
  return len(items)


@gin.configurable
def build_sft_data(output_file: str = gin.REQUIRED, hh_rlhf_files: Sequence[str] = (),
                   choice_files: Sequence[str] = (), limit: int | None = None, seed: int = 0) -> int:
  """`safejax sft-data`: writes a conversation jsonl from the given sources and prints the counts."""
  counts: collections.Counter = collections.Counter()
  items: list[dict] = []
  for path in hh_rlhf_files:
    items += from_hh_rlhf(path, counts)
  for path in choice_files:
    items += from_choice_task(path, counts)
  written = write_conversations(items, output_file, limit=limit, seed=seed)
  for key, n in sorted(counts.items()):
    print(f"{key}: {n}")
  print(f"wrote {written} conversations to {output_file}")
  return 0
