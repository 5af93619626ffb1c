"""The two ways of prompting a model, as in the paper: completion-style and chat-style (the latter
through the project's one chat template, `safejax.chat_template.format_chat`).

Base models are probed completion-style: the request followed by the opening of a compliant answer
(AdvBench, HarmBench and JailbreakBench ship such openings as `target`: "Sure, here is ..."), so
the model is asked to continue an answer rather than to decide whether to give one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import gin

from safejax.chat_template import format_chat
from safejax.evaluation.prompt_sets import PromptRecord

PromptStyle = Literal["completion", "chat"]


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
