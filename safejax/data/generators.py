"""The three generators: rephrasing, RefuseWeb dialogues and Moral Education articles.

Each takes document records and a `TextBackend` and returns `(outputs, dead_letters)` with exactly
one of the two per input document: generation never loses or duplicates a document. Outputs carry
their provenance (`source_id`, `generator`, style, the backend's metadata). Generated text is
untrusted like any input: reserved-token strings are stripped from it and counted.

Every request carries the task twice: as chat messages (the prompts below, in our own words) for
LLM backends, and as structured fields for the template backend. Styles and sampling seeds are
drawn per document from (seed, document id), so re-runs and workers agree.

  rephrase          scores 1-3 by default: the document rewritten in one of the paper's seven styles
  refuseweb         scores 4-5: a User/Assistant dialogue, stored as turns [{"role", "text"}, ...];
                    the user asks for the document's harmful elements, the assistant declines,
                    explains why and offers a constructive alternative. Speaker names are replaced
                    at tokenization time (`tasks.preprocessors`).
  moral_education   each refusal dialogue rewritten as a third-person web article on the principle.
`refuse` runs the last two together: a document is refused only when both succeed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from safejax.generation import Generation, GenerationRequest, TextBackend, generate_validated
from safejax.data.records import GENERATE, MORAL_EDUCATION, REFUSEWEB, REPHRASE, dead_letter, doc_rng, doc_seed
from safejax.safety.rubric import detect_categories
from safejax.text import STYLES
from safejax.vocab import strip_special_tokens

_SYSTEM = ("You write educational web text for a general audience that includes children. You never "
           "include instructions, recipes or specific details that could help anyone cause harm.")

REPHRASE_PROMPT = """Rewrite the document below as {style}.

- Keep the document's core facts and topic.
- Give no instructions or details that could help someone cause harm.
- Where the document touches something sensitive, explain calmly why it is sensitive.
- Every sentence must be safe to read on its own, out of context.
- Keep a warm tone and end on a positive, constructive note.
- Write only the rewritten text, with no preface.

Document:
<<<
{text}
>>>"""

REFUSEWEB_PROMPT = """The web document below contains harmful material. Write a short dialogue between a User and
an Assistant.

- The User asks for something built from the document's harmful elements, described in general
  terms without any working details.
- The Assistant declines politely and firmly, explains why the request is harmful, and offers a
  constructive alternative.
- The dialogue may go on for a few turns; the Assistant never gives in.
- Start every turn on a new paragraph with "User:" or "Assistant:" and write nothing else.

Document:
<<<
{text}
>>>"""

MORAL_EDUCATION_PROMPT = """In the conversation below an assistant declined a harmful request. Write a web-style article,
in the third person, about the ethical principle at stake.

- Give it a title and section headings, with smooth transitions between sections.
- Explain the principle, why it matters, and what people can do instead.
- Do not retell or quote the request or the refusal, and include no harmful details.
- Write only the article.

Conversation:
<<<
{dialogue}
>>>"""

ROLE_LABELS = {"user": "User", "assistant": "Assistant"}
_TURN = re.compile(r"^\s*\**\s*(User|Assistant)\s*\**\s*:\s*\**", re.IGNORECASE | re.MULTILINE)


def choose_style(doc_id: str, seed: int) -> str:
  """The rephrasing style of a document: uniform over the seven styles, fixed by (seed, id)."""
  names = sorted(STYLES)
  return names[int(doc_rng(seed, doc_id, "style").integers(len(names)))]


def parse_dialogue(text: str) -> list[dict[str, str]]:
  """Turns "User: ... / Assistant: ..." text into [{"role", "text"}, ...].

  Raises ValueError unless the text is a dialogue that starts with the user, alternates roles,
  ends with the assistant and has no empty turn.
  """
  markers = list(_TURN.finditer(text))
  if not markers:
    raise ValueError("no 'User:' or 'Assistant:' turn")
  if text[: markers[0].start()].strip():
    raise ValueError("text before the first turn")
  turns = []
  for marker, following in zip(markers, [*markers[1:], None]):
    body = text[marker.end(): following.start() if following else len(text)].strip()
    if not body:
      raise ValueError("empty turn")
    turns.append({"role": marker.group(1).lower(), "text": body})
  roles = [t["role"] for t in turns]
  if roles[0] != "user" or roles[-1] != "assistant":
    raise ValueError(f"a dialogue must start with the user and end with the assistant, got {roles}")
  if any(a == b for a, b in zip(roles, roles[1:])):
    raise ValueError(f"roles must alternate, got {roles}")
  return turns


def render_dialogue(turns: Sequence[dict[str, str]]) -> str:
  """The inverse of `parse_dialogue` (used in prompts and for reading)."""
  return "\n\n".join(f"{ROLE_LABELS[t['role']]}: {t['text']}" for t in turns)


def _clean(text: str) -> tuple[str, int]:
  """Strips reserved-token strings from generated text; raises ValueError when nothing is left."""
  text, removed = strip_special_tokens(text.strip())
  if not text.strip():
    raise ValueError("empty generation")
  return text, removed


def _provenance(record: dict, generator: str, generation: Generation) -> dict:
  return {"source_id": record["id"], "source": record["source"], "generator": generator,
          "score": record["score"], "backend": dict(generation.metadata)}


def _failure(record: dict, generator: str, generation: Generation) -> dict:
  return dead_letter(GENERATE, f"{generator}_failed", doc_id=record["id"], source=record["source"],
                     detail=generation.error or "", raw=generation.text)


def _truncate(text: str, max_chars: int) -> str:
  return text if len(text) <= max_chars else text[:max_chars].rsplit(" ", 1)[0] + " ..."


def rephrase(records: Sequence[dict], backend: TextBackend, *, seed: int = 0, max_document_chars: int = 8000,
             max_tokens: int = 2048, temperature: float = 0.7, attempts: int = 2) -> tuple[list[dict], list[dict]]:
  """Rewrites each document in a style drawn per document; returns (rephrase records, dead letters)."""
  requests = []
  for record in records:
    style = choose_style(record["id"], seed)
    text = _truncate(record["text"], max_document_chars)
    requests.append(GenerationRequest(
        task=REPHRASE,
        messages=({"role": "system", "content": _SYSTEM},
                  {"role": "user", "content": REPHRASE_PROMPT.format(style=STYLES[style], text=text)}),
        fields={"style": style, "title": record.get("meta", {}).get("title"),
                "categories": detect_categories(record["text"]), "text": text},
        max_tokens=max_tokens, temperature=temperature, seed=doc_seed(seed, record["id"], REPHRASE)))
  outputs, failures = [], []
  for record, request, (cleaned, generation) in zip(
      records, requests, generate_validated(backend, requests, _clean, attempts=attempts)):
    if cleaned is None:
      failures.append(_failure(record, REPHRASE, generation))
      continue
    text, removed = cleaned
    outputs.append({"id": f"{record['id']}/{REPHRASE}", "text": text, "style": request.fields["style"],
                    "categories": request.fields["categories"], "special_tokens_removed": removed,
                    **_provenance(record, REPHRASE, generation)})
  return outputs, failures


def _parse_clean_dialogue(text: str) -> tuple[list[dict[str, str]], int]:
  removed = 0
  turns = []
  for turn in parse_dialogue(text):
    body, n = _clean(turn["text"])
    turns.append({"role": turn["role"], "text": body})
    removed += n
  return turns, removed


def refuseweb(records: Sequence[dict], backend: TextBackend, *, seed: int = 0, max_document_chars: int = 8000,
              max_tokens: int = 1024, temperature: float = 0.7, attempts: int = 2) -> tuple[list[dict], list[dict]]:
  """A refusal dialogue per document; returns (refuseweb records, dead letters)."""
  requests = [GenerationRequest(
      task=REFUSEWEB,
      messages=({"role": "system", "content": _SYSTEM},
                {"role": "user", "content": REFUSEWEB_PROMPT.format(
                    text=_truncate(record["text"], max_document_chars))}),
      fields={"title": record.get("meta", {}).get("title"), "categories": detect_categories(record["text"]),
              "text": _truncate(record["text"], max_document_chars)},
      max_tokens=max_tokens, temperature=temperature, seed=doc_seed(seed, record["id"], REFUSEWEB))
      for record in records]
  outputs, failures = [], []
  for record, request, (parsed, generation) in zip(
      records, requests, generate_validated(backend, requests, _parse_clean_dialogue, attempts=attempts)):
    if parsed is None:
      failures.append(_failure(record, REFUSEWEB, generation))
      continue
    turns, removed = parsed
    outputs.append({"id": f"{record['id']}/{REFUSEWEB}", "turns": turns, "title": request.fields["title"],
                    "categories": request.fields["categories"], "special_tokens_removed": removed,
                    **_provenance(record, REFUSEWEB, generation)})
  return outputs, failures


def moral_education(dialogues: Sequence[dict], backend: TextBackend, *, seed: int = 0, max_tokens: int = 2048,
                    temperature: float = 0.7, attempts: int = 2) -> tuple[list[dict], list[dict]]:
  """An article per refuseweb record; returns (moral education records, dead letters).

  Outputs and dead letters name the original document (the dialogue's `source_id`).
  """
  requests = [GenerationRequest(
      task=MORAL_EDUCATION,
      messages=({"role": "system", "content": _SYSTEM},
                {"role": "user", "content": MORAL_EDUCATION_PROMPT.format(dialogue=render_dialogue(d["turns"]))}),
      fields={"title": d.get("title"), "categories": d["categories"], "text": render_dialogue(d["turns"])},
      max_tokens=max_tokens, temperature=temperature, seed=doc_seed(seed, d["source_id"], MORAL_EDUCATION))
      for d in dialogues]
  outputs, failures = [], []
  for dialogue, (cleaned, generation) in zip(
      dialogues, generate_validated(backend, requests, _clean, attempts=attempts)):
    document = {"id": dialogue["source_id"], "source": dialogue["source"], "score": dialogue["score"]}
    if cleaned is None:
      failures.append(_failure(document, MORAL_EDUCATION, generation))
      continue
    text, removed = cleaned
    outputs.append({"id": f"{document['id']}/{MORAL_EDUCATION}", "text": text, "dialogue_id": dialogue["id"],
                    "categories": dialogue["categories"], "special_tokens_removed": removed,
                    **_provenance(document, MORAL_EDUCATION, generation)})
  return outputs, failures


def refuse(records: Sequence[dict], backend: TextBackend, *, seed: int = 0,
           **kwargs) -> tuple[list[dict], list[dict], list[dict]]:
  """RefuseWeb then Moral Education, all or nothing per document.

  Returns (refuseweb records, moral education records, dead letters); a document whose article
  fails loses its dialogue too, so every input is either refused (both records) or dead-lettered.
  `kwargs` (max_tokens, temperature, attempts, max_document_chars) go to both generators where
  they apply.
  """
  moral_kwargs = {k: v for k, v in kwargs.items() if k != "max_document_chars"}
  dialogues, failures = refuseweb(records, backend, seed=seed, **kwargs)
  articles, moral_failures = moral_education(dialogues, backend, seed=seed, **moral_kwargs)
  failed = {f["id"] for f in moral_failures}
  return [d for d in dialogues if d["source_id"] not in failed], articles, failures + moral_failures


def generated_texts(records: Sequence[dict], backend: TextBackend, *, seed: int,
                    render_dialogue: Callable[[dict], str] = lambda d: render_dialogue(d["turns"])) -> list[str]:
  """Everything the recipe writes from `records` (scored documents): their rephrasings, their
  RefuseWeb dialogues (each rendered by `render_dialogue`, e.g. as the models will read it) and
  their moral-education articles. Records that fail to generate are left out."""
  rephrased, _ = rephrase(records, backend, seed=seed)
  dialogues, articles, _ = refuse(records, backend, seed=seed)
  return [r["text"] for r in rephrased] + [r["text"] for r in articles] + [render_dialogue(d) for d in dialogues]
