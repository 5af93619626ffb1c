"""SeqIO Tasks over conversations, for instruction tuning and the benign fine-tuning attack.

Records are JSON lines {"messages": [{"role": "user" | "assistant" | "system", "content": ...}]}
ending with the assistant's reply; a record with "harm_tagged": true keeps the harm tags in its
content and is trained on whole (the paper tags 10 % of the instruction data:
`safejax.posttrain.tag_requests`; see `split_conversation`). The prompt (every turn before the reply, in safejax's chat
template, ending with the ASSISTANT marker) becomes `inputs`; the reply and END_OF_TURN become
`targets`. The trainer packs them into one causal sequence with the loss on `targets` only
(seqio.PrefixLMFeatureConverter).

The reply is tokenized on its own, so that prompt + reply ids are those of the whole conversation
tokenized at once ("<|assistant|> reply"): without a leading space for SentencePiece, whose dummy
prefix supplies the word boundary, and with the template's space for byte-level BPE tokenizers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

import gin
import seqio
import tensorflow as tf

from safejax.chat_template import format_chat
from safejax.vocab import END_OF_TURN, HARM_TAG, ReservedTokens, load_vocabulary, sanitize_text


def split_conversation(messages: list[dict], *, reply_space: bool = False, harm_tagged: bool = False
                       ) -> tuple[str, str]:
  """(prompt, reply) of a conversation whose last message is the assistant's reply.

  Every message's content is untrusted text: `sanitize_text` removes reserved-token strings from
  it (until none is left), so a conversation file cannot teach the model to emit a harm tag or
  a role marker of its own.

  harm_tagged: a record tagged by `safejax.posttrain.tag_requests`. Its harm tags are kept (the
  text between them is still sanitized), and the whole conversation is the reply, prompt "": its
  tags sit in the user's request, where the prompt/reply split puts no loss, and a tag the loss
  never sees teaches the model nothing (in pretraining, too, tagged text is trained on whole).

  reply_space: start the reply with the template's space after the ASSISTANT marker (for
  vocabularies without SentencePiece's dummy prefix).
  """
  if not messages or messages[-1].get("role") != "assistant":
    raise ValueError("a training conversation must end with an assistant message")

  def clean(text: str) -> str:
    if harm_tagged:
      return HARM_TAG.join(sanitize_text(piece)[0] for piece in text.split(HARM_TAG))
    return sanitize_text(text)[0]

  messages = [{**m, "content": clean(m["content"])} for m in messages]
  if harm_tagged:
    return "", format_chat(messages, add_generation_prompt=False, allow_harm_tag=True)
  reply = (" " if reply_space else "") + messages[-1]["content"].strip() + END_OF_TURN
  return format_chat(messages[:-1], add_generation_prompt=True), reply


def _parse(line: tf.Tensor, reply_space: bool) -> dict[str, tf.Tensor]:
  def parse(raw: bytes):
    record = json.loads(raw)
    prompt, reply = split_conversation(record["messages"], reply_space=reply_space,
                                       harm_tagged=record.get("harm_tagged") is True)
    return prompt.encode(), reply.encode()

  inputs, targets = tf.numpy_function(parse, [line], (tf.string, tf.string), stateful=False)
  return {"inputs": tf.reshape(inputs, []), "targets": tf.reshape(targets, [])}


def chat_file_source(file_pattern: str, *, reply_space: bool = False) -> seqio.DataSource:
  compression = "GZIP" if file_pattern.endswith(".gz") else None

  def read(path):
    lines = tf.data.TextLineDataset(path, compression_type=compression)
    return lines.map(lambda line: _parse(line, reply_space), num_parallel_calls=tf.data.AUTOTUNE)

  return seqio.FileDataSource(read_file_fn=read, split_to_filepattern={"train": file_pattern})


@gin.configurable
def register_chat_task(name: str, file_pattern: str, vocab_path: str) -> seqio.Task:
  """Registers (or re-registers) a prompt/response task over conversation jsonl files."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  vocab = load_vocabulary(vocab_path)
  features = {
      "inputs": seqio.Feature(vocabulary=vocab, add_eos=False, dtype=tf.int32),
      "targets": seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32),
  }
  return seqio.TaskRegistry.add(
      name, source=chat_file_source(file_pattern, reply_space=not vocab.adds_dummy_prefix), output_features=features,
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(), seqio.preprocessors.append_eos])


def token_lengths(records: Iterable[dict], vocabulary: str | ReservedTokens) -> list[tuple[int, int]]:
  """(prompt, reply) token counts of conversation records as a chat task feeds them to the trainer
  (the reply with its END_OF_TURN and EOS)."""
  vocab = load_vocabulary(vocabulary) if isinstance(vocabulary, str) else vocabulary
  out = []
  for record in records:
    prompt, reply = split_conversation(record["messages"], reply_space=not vocab.adds_dummy_prefix,
                                       harm_tagged=record.get("harm_tagged") is True)
    out.append((len(vocab.encode(prompt)) if prompt else 0, len(vocab.encode(reply)) + 1))
  return out


def fitting_lengths(lengths: Sequence[tuple[int, int]], *, multiple: int = 8, max_length: int = 1024
                    ) -> dict[str, int]:
  """The prompt length and sequence length (the trainer's `prompt_length`, `sequence_length`) that
  hold the longest prompt and the longest reply whole, rounded up to `multiple`, and how many records
  would still be cut ("cut_records": those longer than `max_length` allows)."""
  if not lengths:
    raise ValueError("no conversations to measure")
  up = lambda n: -(-max(n, 1) // multiple) * multiple  # noqa: E731
  prompt, reply = up(max(p for p, _ in lengths)), up(max(r for _, r in lengths))
  if prompt + reply > max_length:
    prompt = min(prompt, max_length // 2)
    reply = max_length - prompt
  cut = sum(p > prompt or r > reply for p, r in lengths)
  return {"prompt_length": prompt, "sequence_length": prompt + reply, "cut_records": cut}
