"""safejax's one chat template: how a conversation becomes text.

Instruction-tuning data, RefuseWeb dialogues, the backends, the server and the evaluation all render
conversations through `format_chat`, so a model is always asked in the layout it was tuned on. A
turn is the role marker, one space, the content and END_OF_TURN:

    <|system|> Be brief.<|end_of_turn|><|user|> How do tides work?<|end_of_turn|><|assistant|>

Markers are glued to the text before them and followed by a space, which SentencePiece turns into
exactly one id for the marker and a word-boundary piece for the next word (see safejax.vocab).
A reply generated after the final ASSISTANT marker ends with END_OF_TURN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from safejax.vocab import ASSISTANT, END_OF_TURN, HARM_TAG, SPECIAL_TOKENS, SYSTEM, USER

ROLE_MARKERS: dict[str, str] = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}


def format_chat(messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True,
                allow_harm_tag: bool = False) -> str:
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
    allow_harm_tag: content may hold HARM_TAG, and no other reserved string (instruction data
      that safejax's own tagger marked, `safejax.posttrain.tag_requests`).
  """
  parts = []
  for i, message in enumerate(messages):
    role, content = message["role"], message["content"]
    if role not in ROLE_MARKERS:
      raise ValueError(f"unknown chat role {role!r}; roles are {sorted(ROLE_MARKERS)}")
    if role == "system" and i > 0:
      raise ValueError("a system message may only be the first message")
    smuggled = [t for t in SPECIAL_TOKENS if t in content and not (allow_harm_tag and t == HARM_TAG)]
    if smuggled:
      raise ValueError(f"message {i} ({role}) contains reserved token string(s) {smuggled}")
    parts.append(f"{ROLE_MARKERS[role]} {content.strip()}{END_OF_TURN}")
  if add_generation_prompt:
    parts.append(ASSISTANT)
  return "".join(parts)
