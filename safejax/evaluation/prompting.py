"""The two ways of prompting a model, as in the paper, and safejax's one chat template.

`format_chat` is THE chat template of the project: instruction-tuning data, RefuseWeb dialogues,
the server and the evaluation all render conversations through it, so a model is always asked in
the layout it was tuned on. A turn is the role marker, one space, the content and END_OF_TURN:

    <|system|> Be brief.<|end_of_turn|><|user|> How do tides work?<|end_of_turn|><|assistant|>

Markers are glued to the text before them and followed by a space, which SentencePiece turns into
exactly one id for the marker and a word-boundary piece for the next word (see safejax.vocab).
A reply generated after the final ASSISTANT marker ends with END_OF_TURN.

Base models are probed completion-style: the request followed by the opening of a compliant answer
(AdvBench, HarmBench and JailbreakBench ship such openings as `target`: "Sure, here is ..."), so
the model is asked to continue an answer rather than to decide whether to give one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import gin

from safejax.evaluation.benchmarks import PromptRecord
from safejax.vocab import ASSISTANT, END_OF_TURN, SPECIAL_TOKENS, SYSTEM, USER

ROLE_MARKERS: dict[str, str] = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}
PromptStyle = Literal["completion", "chat"]


def format_chat(messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True) -> str:
  """Renders a conversation in safejax's chat template.

  Args:
    messages: [{"role": "system" | "user" | "assistant", "content": str}, ...]; a system message
      may only come first.
    add_generation_prompt: end with the ASSISTANT marker so the model writes the next reply (as in
      Hugging Face's apply_chat_template); False renders a finished conversation (training data).
  Returns:
    The text; every turn, the last assistant turn included, is closed by END_OF_TURN.
  Raises:
    ValueError: unknown role, misplaced system message, or content containing a reserved token
      string (a smuggled role marker or harm tag; strip untrusted text with
      `safejax.vocab.strip_special_tokens` first).
  """
  parts = []
  for i, message in enumerate(messages):
    role, content = message["role"], message["content"]
    if role not in ROLE_MARKERS:
      raise ValueError(f"unknown chat role {role!r}; roles are {sorted(ROLE_MARKERS)}")
    if role == "system" and i > 0:
      raise ValueError("a system message may only be the first message")
    smuggled = [t for t in SPECIAL_TOKENS if t in content]
    if smuggled:
      raise ValueError(f"message {i} ({role}) contains reserved token string(s) {smuggled}")
    parts.append(f"{ROLE_MARKERS[role]} {content.strip()}{END_OF_TURN}")
  if add_generation_prompt:
    parts.append(ASSISTANT)
  return "".join(parts)


@gin.configurable
def completion_prompt(
    record: PromptRecord,
    *,
    template: str = "{prompt}\n{target}:\n",
    template_without_target: str = "Question: {prompt}\nAnswer:",
) -> str:
  """A base-model prompt: the request, then the opening of a compliant answer.

  Records without an opening (XSTest) become a plain question and answer cue.
  """
  if record.target:
    return template.format(prompt=record.prompt, target=record.target.rstrip(":. "))
  return template_without_target.format(prompt=record.prompt)


def chat_prompt(record: PromptRecord, *, system: str | None = None) -> str:
  """A tuned-model prompt: the request as the user's turn, then the assistant's marker."""
  messages = [{"role": "system", "content": system}] if system else []
  messages.append({"role": "user", "content": record.prompt})
  return format_chat(messages)


def build_prompts(records: Sequence[PromptRecord], style: PromptStyle, *, system: str | None = None,
                  completion_template: str | None = None) -> list[str]:
  """The model inputs for `records` in the given style ("completion" for base models, "chat").

  completion_template: overrides `completion_prompt`'s template for records with a target (e.g.
  the question/answer layout a model's pretraining text uses).
  """
  if style == "completion":
    if system:
      raise ValueError("a system message needs the chat style")
    if completion_template is not None:
      return [completion_prompt(r, template=completion_template) for r in records]
    return [completion_prompt(r) for r in records]
  if style == "chat":
    return [chat_prompt(r, system=system) for r in records]
  raise ValueError(f"prompt style must be 'completion' or 'chat', not {style!r}")
