"""Shared fixtures. Tests that read the real data in ../shared/data skip cleanly without it.

Every test process sees 8 fake CPU devices, so sharding is tested for real on one machine.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import random
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("SAFEJAX_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
  """The folder of real public data sets (../shared/data from the repository root)."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f"real data not available at {SHARED_DATA}")
  return SHARED_DATA


_SUBJECTS = ["The river", "A small bird", "The old library", "Our teacher", "The city council", "A quiet farmer",
             "The science club", "My neighbour", "The orchestra", "A young engineer"]
_VERBS = ["watched", "described", "repaired", "painted", "measured", "celebrated", "explained", "visited"]
_OBJECTS = ["the morning light", "a wooden bridge", "the autumn harvest", "an ancient map", "the school garden",
            "a bright comet", "the village market", "a long letter"]
_ENDINGS = ["before sunset.", "with great care.", "for the whole town.", "while it rained.", "in the spring."]


def tiny_documents(n: int, seed: int = 0) -> list[str]:
  """Deterministic plain English documents for fast tests (no outside data)."""
  rng = random.Random(seed)
  docs = []
  for _ in range(n):
    sentences = [f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ENDINGS)}"
                 for _ in range(rng.randint(2, 6))]
    docs.append(" ".join(sentences))
  return docs


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
  """A jsonl corpus of 400 small documents."""
  path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
  with open(path, "w") as f:
    for i, text in enumerate(tiny_documents(400)):
      f.write(json.dumps({"id": f"doc{i}", "text": text}) + "\n")
  return path


@pytest.fixture(scope="session")
def tiny_vocab(tmp_path_factory):
  """A 300-piece SentencePiece vocabulary with safejax's reserved tokens."""
  from safejax.vocab import train_sentencepiece

  path = tmp_path_factory.mktemp("vocab") / "tiny.model"
  return train_sentencepiece(tiny_documents(400), str(path), vocab_size=300)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_corpus, tiny_vocab) -> str:
  """A model dir holding a 3-step tiny decoder (checkpoint, vocabulary, config)."""
  import tasks
  from safejax import train
  from safejax.model import ModelConfig

  tasks.register_text_task("conftest_tiny_text", str(tiny_corpus), tiny_vocab.sentencepiece_model_file)
  model_dir = tmp_path_factory.mktemp("tiny_checkpoint")
  train.train(model_dir=str(model_dir), mixture_or_task_name="conftest_tiny_text", train_steps=3, batch_size=8,
              sequence_length=32, progress=False, log_every=1, checkpoint_every=3,
              model_config=ModelConfig(num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=1, head_dim=16,
                                       mlp_dim=64))
  return str(model_dir)


@pytest.fixture(scope="session")
def tiny_bpe_dir(tmp_path_factory) -> Path:
  """A Hugging Face tokenizer folder like SmolLM2's: byte-level BPE (400 ids, trained with
  `tokenizers` on tiny_documents), <|endoftext|> (id 0) its bos and eos, no pad token."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(tiny_documents(400), trainer)
  folder = tmp_path_factory.mktemp("bpe")
  tokenizer.save(str(folder / "tokenizer.json"))
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
  (folder / "tokenizer_config.json").write_text(json.dumps(config))
  return folder


@pytest.fixture(scope="session")
def tiny_bpe_vocab(tiny_bpe_dir):
  """tiny_bpe_dir as a safejax vocabulary: the reserved tokens and <pad> appended (407 ids)."""
  from safejax.vocab import HfTokenizerVocabulary

  return HfTokenizerVocabulary.from_pretrained(str(tiny_bpe_dir))
