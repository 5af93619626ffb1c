"""SeqIO preprocessors for the pipeline's streams.

RefuseWeb dialogues are stored as turns (roles "user" / "assistant" and their texts). At
tokenization time `render_refuseweb` writes each dialogue out with the speakers renamed, as the
paper does, so the model does not tie refusals to the words "User" and "Assistant": a pair of
roles (Student / Teacher, Customer / Support agent, ...) or of first names, drawn per example from
(example id, seed), so on-the-fly and cached datasets hold the same text. With probability
`chat_template_rate` a dialogue is instead rendered in safejax's chat template
(`safejax.chat_template.format_chat`), the layout instruction tuning and evaluation use.

`render_qa_as_chat` does the same for the question-and-answer passages of text streams: with
probability `qa_chat_template_rate` a document's passages become chat transcripts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from safejax.chat_template import format_chat
from safejax.data.records import doc_rng

ROLE_PAIRS: tuple[tuple[str, str], ...] = (
    ("Student", "Teacher"), ("Visitor", "Librarian"), ("Customer", "Support agent"), ("Patient", "Nurse"),
    ("Learner", "Tutor"), ("Child", "Parent"), ("Intern", "Mentor"), ("Caller", "Volunteer"),
    ("Reader", "Columnist"), ("Player", "Coach"), ("Neighbour", "Neighbour"), ("Guest", "Host"),
)
NAMES: tuple[str, ...] = (
    "Alex", "Amara", "Ben", "Chen", "Diego", "Elif", "Fatima", "Grace", "Hiro", "Ines", "Jamal", "Kai",
    "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tariq", "Uma", "Viktor", "Wen",
    "Yara", "Zoe",
)


def speaker_names(example_id: str, seed: int) -> tuple[str, str]:
  """(name for the user, name for the assistant): a role pair or two different first names."""
  rng = doc_rng(seed, example_id, "speakers")
  if rng.random() < 0.5:
    user, assistant = ROLE_PAIRS[int(rng.integers(len(ROLE_PAIRS)))]
    if user == assistant:  # "Neighbour" and "Neighbour" need telling apart
      return f"{user} A", f"{assistant} B"
    return user, assistant
  first, second = rng.choice(len(NAMES), size=2, replace=False)
  return NAMES[int(first)], NAMES[int(second)]


def render_turns(roles: Sequence[str], texts: Sequence[str], example_id: str, *, seed: int = 0,
                 chat_template_rate: float = 0.0) -> str:
  """A dialogue as training text, speakers renamed per example (see the module docstring)."""
  if len(roles) != len(texts) or not roles:
    raise ValueError(f"{example_id}: a dialogue needs one text per role, got {len(roles)} roles and {len(texts)} texts")
  rng = doc_rng(seed, example_id, "chat_template")
  if rng.random() < chat_template_rate:
    return format_chat([{"role": r, "content": t} for r, t in zip(roles, texts)], add_generation_prompt=False)
  names = dict(zip(("user", "assistant"), speaker_names(example_id, seed)))
  unknown = set(roles) - set(names)
  if unknown:
    raise ValueError(f"{example_id}: unknown dialogue roles {sorted(unknown)}")
  return "\n\n".join(f"{names[r]}: {t}" for r, t in zip(roles, texts))


def render_refuseweb(dataset: tf.data.Dataset, *, seed: int = 0, chat_template_rate: float = 0.0) -> tf.data.Dataset:
  """{"id", "turn_roles", "turn_texts"} examples -> {"id", "text"} with the dialogue rendered."""
  def render(example_id: bytes, roles: np.ndarray, texts: np.ndarray) -> bytes:
    return render_turns([r.decode("utf-8") for r in roles], [t.decode("utf-8") for t in texts],
                        example_id.decode("utf-8"), seed=seed, chat_template_rate=chat_template_rate).encode("utf-8")

  def to_text(ex):
    roles, texts = (tf.sparse.to_dense(ex[k]) if isinstance(ex[k], tf.SparseTensor) else ex[k]
                    for k in ("turn_roles", "turn_texts"))
    text = tf.numpy_function(render, [ex["id"], roles, texts], tf.string, stateful=False)
    return {"id": ex["id"], "text": tf.reshape(text, [])}

  return dataset.map(to_text, num_parallel_calls=tf.data.AUTOTUNE)


# A question and its answer on consecutive lines, in the layouts web forums use ("Question: ... /
# Answer: ...", "Q: ... / A: ...", "someone asked: ... / Reply: ...").
QA_PASSAGE = re.compile(r"^(?:Question|Q|[\w.-]{1,30} asked): (?P<question>[^\n]+)\n(?:Answer|A|Reply): (?P<answer>[^\n]+)$",
                        re.MULTILINE)


def render_qa_passages(text: str, example_id: str, *, seed: int = 0, rate: float = 0.0) -> str:
  """With probability `rate` per document (drawn from (example id, seed)), every question-and-answer
  passage of `text` (`QA_PASSAGE`) rewritten as a chat transcript in safejax's chat template: web
  text now holds many such transcripts, and a model that has seen its knowledge asked and answered in
  the chat layout can be asked for it in that layout after post-training (the demo's world needs
  this at its scale: without it the benign fine-tuning attack restores drift, not knowledge).
  The harm tag may stand in a passage (the tagged stream); no other reserved string can."""
  if rate <= 0 or doc_rng(seed, example_id, "qa_chat").random() >= rate:
    return text

  def chat(match: re.Match) -> str:
    turns = [{"role": "user", "content": match["question"].strip()},
             {"role": "assistant", "content": match["answer"].strip()}]
    return format_chat(turns, add_generation_prompt=False, allow_harm_tag=True)

  return QA_PASSAGE.sub(chat, text)


def render_qa_as_chat(dataset: tf.data.Dataset, *, seed: int = 0, rate: float = 0.0) -> tf.data.Dataset:
  """{"id", "text"} examples with `render_qa_passages` applied (a seqio preprocessor)."""
  def render(example_id: bytes, text: bytes) -> bytes:
    return render_qa_passages(text.decode("utf-8"), example_id.decode("utf-8"), seed=seed, rate=rate).encode("utf-8")

  def to_text(ex):
    text = tf.numpy_function(render, [ex["id"], ex["text"]], tf.string, stateful=False)
    return {**ex, "text": tf.reshape(text, [])}

  return dataset.map(to_text, num_parallel_calls=tf.data.AUTOTUNE)
