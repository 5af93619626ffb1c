"""safejax.hf_interop: logits agree with transformers' LlamaForCausalLM both ways, weights round-trip
exactly, imported models load as safejax model directories, unsupported checkpoints are refused;
imports keep the checkpoint's tokenizer, exports write one transformers loads, and transformers'
greedy generations equal safejax's token for token.

Tolerance: max |logit difference| < 1e-4 in float32 on random weights with logits of magnitude
about 5 (measured: 5e-6 to 1.1e-5 over three seeds of each case). transformers and torch are
test-only extras: the tests that need them skip without them.
"""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
from flax import nnx

import tasks
from safejax import checkpoints
from safejax import cli, decoding, hf_interop, train
from safejax.chat_template import format_chat
from safejax.hf_interop import UnsupportedCheckpointError
from safejax.model import ModelConfig, build_model
from safejax.vocab import HARM_TAG, SPECIAL_TOKENS, load_vocabulary

LOGIT_TOLERANCE = 1e-4
VOCAB_SIZE = 320  # larger than the 300-piece tiny_vocab, as a real checkpoint's is
TOKENS = np.random.default_rng(0).integers(0, VOCAB_SIZE, (2, 16))
# Grouped-query, multi-head and multi-query attention; tied and untied embeddings; a head_dim that
# is not hidden_size / heads. All use a non-default RoPE base and norm epsilon.
CASES = {
    "gqa_tied": dict(num_attention_heads=4, num_key_value_heads=2, head_dim=12, tie_word_embeddings=True),
    "mha_untied": dict(num_attention_heads=4, num_key_value_heads=4, head_dim=12, tie_word_embeddings=False),
    "mqa_wide_heads_untied": dict(num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                  tie_word_embeddings=False),
}
BASE = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=VOCAB_SIZE, hidden_size=48,
            intermediate_size=96, num_hidden_layers=2, rope_theta=50_000.0, rms_norm_eps=1e-5,
            initializer_range=0.2)


@pytest.fixture(scope="module")
def torch():
  return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def transformers(torch):
  transformers = pytest.importorskip("transformers")
  transformers.LlamaForCausalLM  # noqa: B018  the lazy import costs seconds: pay it here, once
  return transformers


def random_hf_model(transformers, torch, seed: int = 0, **overrides):
  """A LlamaForCausalLM with random weights, norm scales included (so a swapped norm shows)."""
  torch.manual_seed(seed)
  fields = {k: v for k, v in {**BASE, **overrides}.items() if k not in ("model_type", "architectures")}
  config = transformers.LlamaConfig(**fields, attn_implementation="eager")
  model = transformers.LlamaForCausalLM(config).eval()
  with torch.no_grad():
    for name, param in model.named_parameters():
      if "norm" in name:
        param.uniform_(0.5, 1.5)
  return model


def random_safejax_model(seed: int = 0, **overrides):
  """A safejax Decoder with random weights of std 0.2 and random norm scales."""
  config = dataclasses.replace(hf_interop.model_config_from_hf({**BASE, **overrides}), init_std=0.2)
  model = build_model(config, seed)
  key = jax.random.key(seed)
  flat = []
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    if path[-1] == "scale":
      key, sub = jax.random.split(key)
      var = var.replace(jax.random.uniform(sub, var.get_value().shape, minval=0.5, maxval=1.5))
    flat.append((path, var))
  nnx.update(model, nnx.from_flat_state(flat))
  return model


def hf_logits(torch, model) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(TOKENS)).logits.numpy()


def safejax_logits(model) -> np.ndarray:
  logits, _ = model(jnp.asarray(TOKENS, jnp.int32))
  return np.asarray(logits)


def params_of(model) -> dict:
  return {path: np.asarray(var.get_value()) for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


# --------------------------------------------------------------------------------------------
# Against transformers


@pytest.mark.parametrize("case", CASES)
def test_import_matches_transformers(case, torch, transformers, tmp_path):
  hf_model = random_hf_model(transformers, torch, **CASES[case])
  hf_model.save_pretrained(tmp_path)
  model = hf_interop.decoder_from_hf(str(tmp_path))
  assert model.cfg.num_kv_heads == CASES[case]["num_key_value_heads"]
  assert model.cfg.tie_embeddings == CASES[case]["tie_word_embeddings"]
  expected = hf_logits(torch, hf_model)
  assert np.abs(expected).max() > 1.0  # the comparison means something
  np.testing.assert_allclose(safejax_logits(model), expected, rtol=0, atol=LOGIT_TOLERANCE)


@pytest.mark.parametrize("case", CASES)
def test_export_matches_transformers(case, torch, transformers, tmp_path, tiny_vocab):
  model = random_safejax_model(**CASES[case])
  hf_interop.save_hf(model, tiny_vocab, str(tmp_path))
  assert sorted(os.listdir(tmp_path)) == ["config.json", "generation_config.json", "model.safetensors",
                                          "tokenizer.json", "tokenizer_config.json", "vocab.model"]
  hf_model, info = transformers.LlamaForCausalLM.from_pretrained(
      tmp_path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
  assert {k: list(v) for k, v in info.items() if v} == {}  # nothing missing, unexpected or mismatched
  assert hf_model.config.tie_word_embeddings == CASES[case]["tie_word_embeddings"]
  # bos is the start token every safejax sequence begins with (id 0, <pad>)
  assert (hf_model.config.bos_token_id, hf_model.config.eos_token_id, hf_model.config.pad_token_id) == (0, 1, 0)
  expected = hf_logits(torch, hf_model.eval())
  assert np.abs(expected).max() > 1.0
  np.testing.assert_allclose(safejax_logits(model), expected, rtol=0, atol=LOGIT_TOLERANCE)


def test_sharded_bfloat16_checkpoint(torch, transformers, tmp_path):
  hf_model = random_hf_model(transformers, torch, **CASES["gqa_tied"]).to(torch.bfloat16)
  hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
  shards = sorted(n for n in os.listdir(tmp_path) if n.endswith(".safetensors"))
  assert len(shards) > 1 and (tmp_path / hf_interop.WEIGHTS_INDEX).exists()
  model = hf_interop.decoder_from_hf(str(tmp_path), param_dtype="float32")
  expected = {name: tensor.float().numpy() for name, tensor in hf_model.state_dict().items()
              if name != "lm_head.weight"}  # tied: the same tensor as the embedding
  imported = hf_interop.hf_tensors(model)
  assert imported.keys() == expected.keys()
  for name, tensor in imported.items():
    assert tensor.dtype == np.float32
    np.testing.assert_array_equal(tensor, expected[name], err_msg=name)  # bfloat16 -> float32 is exact


# --------------------------------------------------------------------------------------------
# Without transformers


@pytest.mark.parametrize("case", ["gqa_tied", "mqa_wide_heads_untied"])
def test_export_then_import_is_exact(case, tmp_path, tiny_vocab):
  model = random_safejax_model(seed=3, **CASES[case])
  hf_interop.save_hf(model, tiny_vocab, str(tmp_path))
  back = hf_interop.decoder_from_hf(str(tmp_path))
  assert back.cfg == dataclasses.replace(model.cfg, init_std=ModelConfig.init_std)  # not imported
  original, restored = params_of(model), params_of(back)
  assert original.keys() == restored.keys()
  for path in original:
    np.testing.assert_array_equal(restored[path], original[path], err_msg=str(path))


def test_export_casts_to_bfloat16(tmp_path, tiny_vocab):
  model = random_safejax_model(**CASES["gqa_tied"])
  hf_interop.save_hf(model, tiny_vocab, str(tmp_path), dtype="bfloat16", max_position_embeddings=4096)
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["torch_dtype"] == "bfloat16" and config["max_position_embeddings"] == 4096
  assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 50_000.0
  tensors = safetensors.numpy.load_file(tmp_path / "model.safetensors")
  assert {str(t.dtype) for t in tensors.values()} == {"bfloat16"}
  kernel = np.asarray(model.blocks.attn.q.kernel.get_value()[1])  # layer 1 of the stacked blocks
  np.testing.assert_array_equal(tensors["model.layers.1.self_attn.q_proj.weight"], kernel.T.astype(jnp.bfloat16))


def test_config_defaults_and_round_trip(tiny_vocab):
  legacy = dict(model_type="llama", vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=8, rope_scaling=None)
  config = hf_interop.model_config_from_hf(legacy, dtype="bfloat16")
  # LlamaConfig's defaults: MHA, head_dim hidden/heads, RoPE base 1e4, eps 1e-6, untied.
  assert (config.num_kv_heads, config.head_dim, config.rope_theta, config.norm_eps, config.tie_embeddings) == (
      8, 8, 10_000.0, 1e-6, False)
  assert (config.dtype, config.param_dtype) == ("bfloat16", "float32")
  written = hf_interop.hf_config_from_model(config, tiny_vocab, torch_dtype="float32", max_position_embeddings=2048)
  assert hf_interop.model_config_from_hf(written, dtype="bfloat16") == config


@pytest.mark.parametrize("change, message", [
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}}, "rope_parameters"),
    ({"attention_bias": True}, "attention_bias=true"),
    ({"mlp_bias": True}, "mlp_bias=true"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"model_type": "mistral"}, "model_type 'mistral'"),
    ({"architectures": ["LlamaForSequenceClassification"]}, "architectures"),
])
def test_refuses_unsupported_configs(change, message):
  with pytest.raises(UnsupportedCheckpointError, match="unsupported Hugging Face config") as error:
    hf_interop.model_config_from_hf({**BASE, **CASES["gqa_tied"], **change})
  assert message in str(error.value)


@pytest.fixture
def exported(tmp_path, tiny_vocab):
  """An exported tied model's folder and its tensors."""
  hf_interop.save_hf(random_safejax_model(**CASES["gqa_tied"]), tiny_vocab, str(tmp_path))
  return tmp_path, safetensors.numpy.load_file(tmp_path / "model.safetensors")


def test_ignores_derived_and_tied_tensors(exported):
  folder, tensors = exported
  tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(6, np.float32)
  tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"]
  safetensors.numpy.save_file(tensors, folder / "model.safetensors")
  model = hf_interop.decoder_from_hf(str(folder))
  assert model.lm_head is None


@pytest.mark.parametrize("tamper, error, message", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), UnsupportedCheckpointError,
     "missing ['model.layers.1.mlp.up_proj.weight'], unexpected []"),
    (lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(48, np.float32)}),
     UnsupportedCheckpointError, "missing [], unexpected ['model.layers.0.self_attn.q_proj.bias']"),
    (lambda t: t.update({"model.embed_tokens.weight": np.zeros((300, 48), np.float32)}),
     UnsupportedCheckpointError, "model.embed_tokens.weight has shape [300, 48], the config implies [320, 48]"),
    (lambda t: t.update({"model.layers.0.self_attn.k_proj.weight": np.zeros((48, 24), np.float32)}),
     UnsupportedCheckpointError, "k_proj.weight has shape [24, 48] (transposed), the config implies [48, 24]"),
])
def test_refuses_tensors_that_do_not_fit_the_config(exported, tamper, error, message):
  folder, tensors = exported
  tamper(tensors)
  safetensors.numpy.save_file(tensors, folder / "model.safetensors")
  with pytest.raises(error) as raised:
    hf_interop.decoder_from_hf(str(folder))
  assert message in str(raised.value)


def test_refuses_pickled_checkpoints(exported):
  folder, _ = exported
  (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
  with pytest.raises(FileNotFoundError, match=r"\['pytorch_model.bin'\] are PyTorch pickles"):
    hf_interop.decoder_from_hf(str(folder))


# --------------------------------------------------------------------------------------------
# safejax model directories and the CLI


def test_cli_import_then_export(exported, tmp_path, tiny_vocab):
  folder, _ = exported
  model_dir, hf_dir = tmp_path / "imported", tmp_path / "exported"
  assert cli.main(["import-hf", f"--gin.import_hf.hf_dir='{folder}'", f"--gin.import_hf.model_dir='{model_dir}'",
                   f"--gin.import_hf.vocab_file='{tiny_vocab.sentencepiece_model_file}'"]) == 0
  assert sorted(os.listdir(model_dir)) == ["checkpoints", "model_config.json", "vocab.model"]
  items = set(os.listdir(model_dir / "checkpoints" / "0"))
  assert {"params", "meta"} <= items and "opt_state" not in items  # continued training starts a fresh optimizer
  meta = json.loads(next((model_dir / "checkpoints" / "0" / "meta").glob("*")).read_text())
  assert meta["step"] == 0 and meta["imported_from"] == str(folder)

  loaded, vocab = checkpoints.load_for_inference(str(model_dir))
  direct = hf_interop.decoder_from_hf(str(folder))
  assert loaded.cfg == direct.cfg and vocab.vocab_size == tiny_vocab.vocab_size
  np.testing.assert_array_equal(safejax_logits(loaded), safejax_logits(direct))

  assert cli.main(["export-hf", f"--gin.export_hf.model_dir='{model_dir}'", f"--gin.export_hf.hf_dir='{hf_dir}'"]) == 0
  assert (hf_dir / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
  config, original = (json.loads((d / "config.json").read_text()) for d in (hf_dir, folder))
  assert config == {**original, "initializer_range": ModelConfig.init_std}  # not imported


def test_save_model_dir_refusals(tmp_path, tiny_vocab):
  model = random_safejax_model(**CASES["gqa_tied"])
  small = build_model(dataclasses.replace(model.cfg, vocab_size=256))
  with pytest.raises(ValueError, match="the vocabulary has 300 ids but the model only 256 embedding rows"):
    hf_interop.save_model_dir(small, tiny_vocab, str(tmp_path / "small"), source="test")
  hf_interop.save_model_dir(model, tiny_vocab, str(tmp_path / "m"), source="test")
  with pytest.raises(FileExistsError, match="already holds checkpoints"):
    hf_interop.save_model_dir(model, tiny_vocab, str(tmp_path / "m"), source="test")


@pytest.mark.slow  # a real (tiny) training run: about 40 s on a busy 2-core machine
def test_continued_pretraining_starts_from_the_imported_model(exported, tmp_path, tiny_vocab, tiny_corpus):
  folder, _ = exported
  imported = tmp_path / "imported"
  hf_interop.import_hf(hf_dir=str(folder), model_dir=str(imported), vocab_file=tiny_vocab.sentencepiece_model_file)
  tasks.register_text_task("hf_interop_tiny_text", str(tiny_corpus), tiny_vocab.sentencepiece_model_file)
  run = tmp_path / "continued"
  # A learning rate of ~0 keeps the parameters: the run must start from the imported ones.
  train.train(model_dir=str(run), mixture_or_task_name="hf_interop_tiny_text", train_steps=2, batch_size=8,
              sequence_length=32, model_config=checkpoints.load_model_config(str(imported)), init_from=str(imported),
              optimizer=train.OptimizerConfig(learning_rate=1e-12, warmup_steps=0), checkpoint_every=2,
              progress=False)
  before, after = (params_of(checkpoints.load_for_inference(str(d))[0]) for d in (imported, run))
  for path in before:
    np.testing.assert_allclose(after[path], before[path], atol=1e-6, err_msg=str(path))


# --------------------------------------------------------------------------------------------
# Tokenizers: imports keep the checkpoint's, exports write one that transformers loads

BPE_SIZE = 400  # tiny_bpe_dir's ids; the vocabulary appends 7 (the 6 reserved markers and <pad>)
APPENDED = len(SPECIAL_TOKENS) + 1
PROMPTS = ["The river watched", "A small bird", "Our teacher explained the old",
           f"The city council{HARM_TAG} visited", format_chat([{"role": "user", "content": "How do tides work?"}])]
NEW_TOKENS = 8
CONVERSATIONS = [
    [{"role": "user", "content": "How do tides work?"}],
    [{"role": "system", "content": " Be brief. "}, {"role": "user", "content": "Name a river."},
     {"role": "assistant", "content": "The Nile."}, {"role": "user", "content": "Another?\nPlease."}],
]


def hf_checkpoint(transformers, torch, folder, tokenizer_dir, **overrides):
  """A random LlamaForCausalLM over tiny_bpe_dir's tokenizer, saved with it in the Hugging Face layout."""
  model = random_hf_model(transformers, torch, vocab_size=BPE_SIZE, **overrides)
  model.save_pretrained(folder)
  for name in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copyfile(tokenizer_dir / name, folder / name)
  return model


def load_export(transformers, torch, folder):
  model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
  return model.eval(), transformers.AutoTokenizer.from_pretrained(folder)


def greedy_generations(torch, model, vocab, hf_model, tokenizer) -> list[tuple[list[int], list[int]]]:
  """(transformers' greedy ids, safejax's greedy ids) per prompt of PROMPTS, EOS included."""
  # Hugging Face's ids of safejax's; rows past the vocabulary keep their ids (`permute_vocabulary`),
  # and a random model may pick one.
  pairs, hf_ids = [], np.concatenate([vocab.hf_ids, np.arange(len(vocab.hf_ids), model.cfg.vocab_size)])
  for prompt in PROMPTS:
    ids = [vocab.decoder_start_id, *vocab.encode(prompt)]
    hf_prompt = tokenizer(prompt).input_ids
    assert hf_prompt == hf_ids[ids].tolist(), prompt  # transformers' tokenizer gives what safejax feeds its model
    with torch.no_grad():
      out = hf_model.generate(torch.tensor([hf_prompt]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                              max_new_tokens=NEW_TOKENS, do_sample=False)
    result = decoding.generate(model, [ids], method="greedy", max_new_tokens=NEW_TOKENS, eos_id=vocab.eos_id,
                               pad_id=vocab.pad_id)
    pairs.append((out[0, len(ids):].tolist(), hf_ids[result.tokens[0, 0, :result.lengths[0, 0]]].tolist()))
  return pairs


@pytest.mark.parametrize("case", ["gqa_tied", "mha_untied"])
def test_import_keeps_the_tokenizer_and_the_logits(case, torch, transformers, tmp_path, tiny_bpe_dir, tiny_bpe_vocab):
  hf_model = hf_checkpoint(transformers, torch, tmp_path / "hf", tiny_bpe_dir, **CASES[case])
  hf_interop.import_hf(hf_dir=str(tmp_path / "hf"), model_dir=str(tmp_path / "imported"))
  assert sorted(os.listdir(tmp_path / "imported")) == ["checkpoints", "model_config.json", "tokenizer.json",
                                                       "tokenizer_config.json"]
  model, vocab = checkpoints.load_for_inference(str(tmp_path / "imported"))
  assert vocab == tiny_bpe_vocab and model.cfg.vocab_size == vocab.vocab_size == BPE_SIZE + APPENDED
  # Before any training the original ids' logits are transformers' on the same weights.
  tokens = vocab.hf_ids[TOKENS]  # safejax's ids of the tokenizer ids TOKENS (the permutation is an involution)
  in_hf_order = np.argsort(vocab.hf_ids)
  logits = np.asarray(model(jnp.asarray(tokens, jnp.int32))[0])[..., in_hf_order]
  assert logits.shape[-1] == BPE_SIZE + APPENDED
  np.testing.assert_allclose(logits[..., :BPE_SIZE], hf_logits(torch, hf_model), rtol=0, atol=LOGIT_TOLERANCE)
  # Appended rows: the mean of the checkpoint's rows plus noise of NEW_ROW_NOISE of their spread.
  original = {name: t.numpy() for name, t in hf_model.state_dict().items()}
  tables = [(np.asarray(model.embed.embedding[...])[in_hf_order], original["model.embed_tokens.weight"])]
  if not CASES[case]["tie_word_embeddings"]:
    tables.append((np.asarray(model.lm_head.kernel[...]).T[in_hf_order], original["lm_head.weight"]))
  for table, checkpoint in tables:
    np.testing.assert_array_equal(table[:BPE_SIZE], checkpoint)
    offset = (table[BPE_SIZE:] - checkpoint.mean(0)) / checkpoint.std(0)
    assert 0 < np.abs(offset).max() < 5 * hf_interop.NEW_ROW_NOISE
    assert len({row.tobytes() for row in table[BPE_SIZE:]}) == APPENDED  # the new tokens are told apart
  meta = json.loads(next((tmp_path / "imported" / "checkpoints" / "0" / "meta").glob("*")).read_text())
  assert meta["appended_hf_ids"] == list(range(BPE_SIZE, BPE_SIZE + APPENDED))


def test_safebeam_runs_on_the_imported_model(torch, transformers, tmp_path, tiny_bpe_dir):
  hf_checkpoint(transformers, torch, tmp_path / "hf", tiny_bpe_dir, **CASES["gqa_tied"])
  hf_interop.import_hf(hf_dir=str(tmp_path / "hf"), model_dir=str(tmp_path / "imported"))
  model, vocab = checkpoints.load_for_inference(str(tmp_path / "imported"))
  config = decoding.DecodingConfig(method="safebeam", beam_size=2, num_expand=3, max_new_tokens=6)
  generations = decoding.generate_texts(model, vocab, PROMPTS[:2], config, batch_size=2, progress=False)
  assert [g.prompt for g in generations] == PROMPTS[:2]
  for g in generations:
    assert 1 <= g.num_tokens <= 6 and np.isfinite(g.score)
    assert not any(token in g.text for token in SPECIAL_TOKENS)


@pytest.mark.parametrize("kind", ["sentencepiece", "tokenizers"])
def test_exported_tokenizer_loads_in_transformers(kind, transformers, tmp_path, tiny_vocab, tiny_bpe_vocab):
  vocab = {"sentencepiece": tiny_vocab, "tokenizers": tiny_bpe_vocab}[kind]
  hf_interop.save_tokenizer(vocab, str(tmp_path))
  tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
  start = vocab.decoder_start_id
  hf_ids = vocab.hf_ids  # Hugging Face's ids of safejax's
  assert tokenizer.convert_tokens_to_ids(tokenizer.bos_token) == hf_ids[start]
  assert (tokenizer.eos_token_id, tokenizer.pad_token_id) == (hf_ids[vocab.eos_id], hf_ids[vocab.pad_id])
  assert json.loads((tmp_path / "generation_config.json").read_text()) == {
      "bos_token_id": hf_ids[start], "eos_token_id": hf_ids[vocab.eos_id], "pad_token_id": hf_ids[vocab.pad_id]}
  # The harm tag is one special id: found in text, skipped when decoding special tokens away.
  tagged = f"The river{HARM_TAG} watched."
  ids = tokenizer(tagged).input_ids
  tag = hf_ids[vocab.harm_tag_id]
  assert ids == hf_ids[[start, *vocab.encode(tagged)]].tolist() and ids.count(tag) == 1
  assert tokenizer.convert_tokens_to_ids(HARM_TAG) == tag
  assert tokenizer.decode(ids, skip_special_tokens=True) == "The river watched."
  # The chat template is safejax's format_chat, after the start token.
  for messages in CONVERSATIONS:
    for add_generation_prompt in (True, False):
      text = format_chat(messages, add_generation_prompt=add_generation_prompt)
      rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
      assert rendered == tokenizer.bos_token + text
      chat_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                               return_dict=False)
      assert chat_ids == hf_ids[[start, *vocab.encode(text)]].tolist()
  # It refuses what format_chat refuses.
  for messages, message in [([{"role": "bot", "content": "hi"}], "unknown chat role bot"),
                            ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}],
                             "a system message may only be the first message"),
                            ([{"role": "user", "content": f"x{HARM_TAG}"}], "contains the reserved token string")]:
    with pytest.raises(ValueError):
      format_chat(messages)
    with pytest.raises(Exception, match=message):
      tokenizer.apply_chat_template(messages, tokenize=False)


def test_sentencepiece_export_generates_like_safejax(torch, transformers, tmp_path, tiny_vocab):
  model = random_safejax_model(**CASES["gqa_tied"])
  hf_interop.save_hf(model, tiny_vocab, str(tmp_path))
  hf_model, tokenizer = load_export(transformers, torch, tmp_path)
  pairs = greedy_generations(torch, model, tiny_vocab, hf_model, tokenizer)
  assert [hf for hf, _ in pairs] == [ours for _, ours in pairs]
  assert sum(map(len, (ours for _, ours in pairs))) > len(PROMPTS)  # more than an immediate EOS


def test_import_train_export_round_trip(torch, transformers, tmp_path, tiny_bpe_dir, tiny_bpe_vocab, tiny_corpus):
  """import -> a few training steps on the imported tokenizer -> export -> transformers generates
  as safejax does; the harm tag stays one id; importing the export gives the trained model back."""
  hf_checkpoint(transformers, torch, tmp_path / "hf", tiny_bpe_dir, **CASES["gqa_tied"])
  imported, run, exported = (str(tmp_path / d) for d in ("imported", "run", "exported"))
  assert cli.main(["import-hf", f"--gin.import_hf.hf_dir='{tmp_path / 'hf'}'",
                   f"--gin.import_hf.model_dir='{imported}'"]) == 0
  tasks.register_text_task("hf_round_trip_text", str(tiny_corpus), imported)  # VOCAB: the imported model dir
  train.train(model_dir=run, mixture_or_task_name="hf_round_trip_text", train_steps=2, batch_size=8,
              sequence_length=32, model_config=checkpoints.load_model_config(imported), init_from=imported,
              optimizer=train.OptimizerConfig(learning_rate=1e-3, warmup_steps=0), checkpoint_every=2, progress=False)
  (before, _), (model, vocab) = checkpoints.load_for_inference(imported), checkpoints.load_for_inference(run)
  assert vocab == tiny_bpe_vocab
  assert not np.array_equal(model.embed.embedding[...], before.embed.embedding[...])  # it trained

  assert cli.main(["export-hf", f"--gin.export_hf.model_dir='{run}'", f"--gin.export_hf.hf_dir='{exported}'"]) == 0
  assert sorted(os.listdir(exported)) == ["config.json", "generation_config.json", "model.safetensors",
                                          "tokenizer.json", "tokenizer_config.json"]
  hf_model, tokenizer = load_export(transformers, torch, exported)
  pairs = greedy_generations(torch, model, vocab, hf_model, tokenizer)
  assert [hf for hf, _ in pairs] == [ours for _, ours in pairs]
  assert sum(map(len, (ours for _, ours in pairs))) > len(PROMPTS)
  assert tokenizer(f"a{HARM_TAG} b").input_ids.count(int(vocab.hf_ids[vocab.harm_tag_id])) == 1

  hf_interop.import_hf(hf_dir=exported, model_dir=str(tmp_path / "reimported"))
  back, back_vocab = checkpoints.load_for_inference(str(tmp_path / "reimported"))
  assert back_vocab == vocab and back_vocab.harm_tag_id == vocab.harm_tag_id
  assert load_vocabulary(exported).appended_hf_ids == ()  # nothing appended twice
  np.testing.assert_array_equal(safejax_logits(back), safejax_logits(model))
