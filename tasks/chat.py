"""SeqIO Tasks over conversations, for instruction tuning and the benign fine-tuning attack.

Records are JSON lines {"messages": [{"role": "user" | "assistant" | "system", "content": ...}]}
ending with the assistant's reply. The prompt (every turn before the reply, in safejax's chat
template, ending with the ASSISTANT marker) becomes `inputs`; the reply and END_OF_TURN become
`targets`. The trainer packs them into one causal sequence with the loss on `targets` only
(seqio.PrefixLMFeatureConverter).

The reply is tokenized on its own without a leading space: SentencePiece's dummy prefix then gives
the same pieces as the whole conversation tokenized at once ("<|assistant|> reply").
"""

from __future__ import annotations

import json

import gin
import seqio
import tensorflow as tf

from safejax.chat_template import format_chat
from safejax.vocab import END_OF_TURN, SafejaxVocabulary


def split_conversation(messages: list[dict]) -> tuple[str, str]:
  """(prompt, reply) of a conversation whose last message is the assistant's reply."""
  if not messages or messages[-1].get("role") != "assistant":
    raise ValueError("a training conversation must end with an assistant message")
  return format_chat(messages[:-1], add_generation_prompt=True), messages[-1]["content"].strip() + END_OF_TURN


def _parse(line: tf.Tensor) -> dict[str, tf.Tensor]:
  def parse(raw: bytes):
    prompt, reply = split_conversation(json.loads(raw)["messages"])
    return prompt.encode(), reply.encode()

  inputs, targets = tf.numpy_function(parse, [line], (tf.string, tf.string), stateful=False)
  return {"inputs": tf.reshape(inputs, []), "targets": tf.reshape(targets, [])}


def chat_file_source(file_pattern: str) -> seqio.DataSource:
  compression = "GZIP" if file_pattern.endswith(".gz") else None

  def read(path):
    lines = tf.data.TextLineDataset(path, compression_type=compression)
    return lines.map(_parse, num_parallel_calls=tf.data.AUTOTUNE)

  return seqio.FileDataSource(read_file_fn=read, split_to_filepattern={"train": file_pattern})


@gin.configurable
def register_chat_task(name: str, file_pattern: str, vocab_path: str) -> seqio.Task:
  """Registers (or re-registers) a prompt/response task over conversation jsonl files."""
  if name in seqio.TaskRegistry.names():
    seqio.TaskRegistry.remove(name)
  vocab = SafejaxVocabulary(vocab_path)
  features = {
      "inputs": seqio.Feature(vocabulary=vocab, add_eos=False, dtype=tf.int32),
      "targets": seqio.Feature(vocabulary=vocab, add_eos=True, dtype=tf.int32),
  }
  return seqio.TaskRegistry.add(
      name, source=chat_file_source(file_pattern), output_features=features,
      preprocessors=[seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(), seqio.preprocessors.append_eos])
