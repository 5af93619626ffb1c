"""Llama / SmolLM2 checkpoints in the Hugging Face layout, into and out of safejax.

The Hugging Face layout is a folder holding `config.json` (LlamaForCausalLM fields) and the
weights in `model.safetensors`, or in shards listed by `model.safetensors.index.json`:

  safejax import-hf --gin.import_hf.hf_dir="'SmolLM2-135M'" --gin.import_hf.model_dir="'/tmp/smollm2'"
  safejax export-hf --gin.export_hf.model_dir="'/tmp/m'" --gin.export_hf.hf_dir="'/tmp/m_hf'"

Weights map one to one (`weight_names`). Hugging Face's nn.Linear weights are [out, in] and
safejax's nnx.Linear kernels [in, out], so every projection is transposed; embeddings and RMSNorm
scales are copied. Both models rotate q and k in the rotate-half RoPE layout (each head's features
are [first half | second half], paired i with i + H/2) with the same frequencies, so unlike the
conversion from Meta's original checkpoints no permutation of q/k rows is needed: the tests check
logits against transformers' LlamaForCausalLM.

An imported model becomes a safejax model directory (model_config.json, its vocabulary and
checkpoints/0 holding the parameters only), which `safejax.checkpoints.load_for_inference` loads.
Continued (safety) pretraining is a new run that starts from its parameters with a fresh
optimizer state; `train` checks that the run's model config and vocabulary are the imported ones
(VOCAB may name the imported model directory: `safejax.vocab.load_vocabulary` reads its tokenizer):

  safejax train --gin_file=models/smollm2_135m.gin --gin_file=runs/pretrain_text.gin \
      --gin.ModelConfig.vocab_size=49159 --gin.train.init_from="'/tmp/smollm2'" --gin.VOCAB="'/tmp/smollm2'" \
      --gin.TEXT_FILES="'/tmp/run/corpus/*.jsonl'" --gin.MODEL_DIR="'/tmp/smollm2_safety'"

Tokenizers. The import keeps the checkpoint's own tokenizer (tokenizer.json, byte-level BPE as in
SmolLM2 and Llama 3) as a `safejax.vocab.HfTokenizerVocabulary`: its ids, and so the embedding
rows, keep their meaning. safejax's reserved tokens (harm tag, chat markers, a pad token when there
is none) are appended after its ids, and the embeddings (and an untied lm head) grow by one row per
appended token, initialised by `resize_vocabulary`; logits for the original ids are unchanged.
Inside safejax the pad token and the tokenizer's id 0 trade ids (seqio pads with id 0), so the rows
are permuted by the vocabulary's `hf_ids` on import and back on export. A safejax SentencePiece
vocabulary can replace the tokenizer instead (`vocab_file`): its ids then name other pieces than
the checkpoint's and continued pretraining relearns the embedding rows.

Exports write what transformers, vLLM and TGI load whole: config.json, the weights,
generation_config.json (eos), tokenizer.json with the reserved tokens as special tokens (the
imported tokenizer, or the SentencePiece model converted by
`safejax.vocab.sentencepiece_to_tokenizers`, which encodes like it), and tokenizer_config.json
with the special tokens and safejax's chat format as a Jinja chat template (`chat_template`). The
tokenizer prepends the start token every safejax sequence begins with, so
`AutoTokenizer.from_pretrained(dir)(text)` gives the ids safejax's model sees. SentencePiece
models also keep `vocab.model`, which an import of the export reads back exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import safetensors
import safetensors.numpy
from flax import nnx
from tqdm.auto import tqdm

from safejax import checkpoints
from safejax.chat_template import ROLE_MARKERS
from safejax.model import Decoder, ModelConfig, build_model
from safejax.vocab import (END_OF_TURN, SENTENCEPIECE_FILE, SPECIAL_TOKENS, HfTokenizerVocabulary, SafejaxVocabulary,
                           Vocabulary, load_vocabulary, write_hf_tokenizer)

log = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
GENERATION_CONFIG_JSON = "generation_config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# Buffers some older checkpoints store beside the weights; recomputed from the config.
_DERIVED_TENSORS = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")


class UnsupportedCheckpointError(ValueError):
  """A checkpoint safejax's decoder cannot represent exactly, or one that is malformed."""


# --------------------------------------------------------------------------------------------
# Configs


def _rope_theta(hf_config: Mapping[str, Any], problems: list[str]) -> float:
  """RoPE base from `rope_parameters` (transformers >= 5) or `rope_theta` + `rope_scaling`."""
  parameters = hf_config.get("rope_parameters")
  if parameters is not None:
    if parameters.get("rope_type", "default") != "default":
      problems.append(f"rope_parameters {parameters} (only plain RoPE, rope_type 'default', is supported)")
    return float(parameters.get("rope_theta", hf_config.get("rope_theta", 10_000.0)))
  scaling = hf_config.get("rope_scaling")
  if scaling is not None and scaling.get("rope_type", scaling.get("type")) != "default":
    problems.append(f"rope_scaling {scaling} (RoPE scaling is not supported)")
  return float(hf_config.get("rope_theta", 10_000.0))


def model_config_from_hf(hf_config: Mapping[str, Any], *, dtype: str = "float32",
                         param_dtype: str = "float32") -> ModelConfig:
  """The safejax ModelConfig of a Hugging Face Llama config.json (as a dict).

  Raises UnsupportedCheckpointError naming every field safejax's decoder does not implement
  (RoPE scaling, attention or MLP biases, another activation or architecture). Fields without a
  bearing on the computed function are not carried over: max_position_embeddings (safejax's
  RoPE has no length limit), initializer_range (only how fresh weights would be drawn; init_std
  keeps its default so the config matches the gin model files), token ids, dropout.
  """
  problems = []
  if hf_config.get("model_type") != "llama":
    problems.append(f"model_type {hf_config.get('model_type')!r} (expected 'llama')")
  architectures = hf_config.get("architectures") or ["LlamaForCausalLM"]
  if list(architectures) != ["LlamaForCausalLM"]:
    problems.append(f"architectures {architectures} (expected ['LlamaForCausalLM'])")
  rope_theta = _rope_theta(hf_config, problems)
  if hf_config.get("hidden_act", "silu") not in ("silu", "swish"):
    problems.append(f"hidden_act {hf_config['hidden_act']!r} (the MLP is SwiGLU: silu)")
  for bias in ("attention_bias", "mlp_bias"):
    if hf_config.get(bias, False):
      problems.append(f"{bias}=true (safejax's projections have no biases)")
  if problems:
    raise UnsupportedCheckpointError("unsupported Hugging Face config: " + "; ".join(problems))
  num_heads = hf_config["num_attention_heads"]
  return ModelConfig(
      num_layers=hf_config["num_hidden_layers"],
      embed_dim=hf_config["hidden_size"],
      num_heads=num_heads,
      num_kv_heads=hf_config.get("num_key_value_heads") or num_heads,
      head_dim=hf_config.get("head_dim") or hf_config["hidden_size"] // num_heads,
      mlp_dim=hf_config["intermediate_size"],
      vocab_size=hf_config["vocab_size"],
      rope_theta=rope_theta,
      norm_eps=hf_config.get("rms_norm_eps", 1e-6),
      tie_embeddings=hf_config.get("tie_word_embeddings", False),  # LlamaConfig's default
      param_dtype=param_dtype,
      dtype=dtype,
  )


def hf_token_ids(vocab: Vocabulary) -> dict[str, int]:
  """bos (the start token every safejax sequence begins with), eos and pad, as the Hugging Face
  tokenizer's ids."""
  hf_ids = vocab.hf_ids
  return {"bos_token_id": int(hf_ids[vocab.decoder_start_id]), "eos_token_id": int(hf_ids[vocab.eos_id]),
          "pad_token_id": int(hf_ids[vocab.pad_id])}


def hf_config_from_model(config: ModelConfig, vocab: Vocabulary, *, torch_dtype: str,
                         max_position_embeddings: int) -> dict[str, Any]:
  """A LlamaForCausalLM config.json for a safejax model (readable by transformers 4 and 5).

  RoPE is written both ways, `rope_theta` (transformers 4, vLLM, llama.cpp) and `rope_parameters`
  (transformers 5). safejax's RoPE has no length limit: `max_position_embeddings` only tells
  Hugging Face tools the context the model was meant for. Token ids: `hf_token_ids`.
  """
  return {
      "architectures": ["LlamaForCausalLM"],
      "model_type": "llama",
      "vocab_size": config.vocab_size,
      "hidden_size": config.embed_dim,
      "intermediate_size": config.mlp_dim,
      "num_hidden_layers": config.num_layers,
      "num_attention_heads": config.num_heads,
      "num_key_value_heads": config.num_kv_heads,
      "head_dim": config.head_dim,
      "hidden_act": "silu",
      "rms_norm_eps": config.norm_eps,
      "rope_theta": config.rope_theta,
      "rope_scaling": None,
      "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
      "attention_bias": False,
      "attention_dropout": 0.0,
      "mlp_bias": False,
      "tie_word_embeddings": config.tie_embeddings,
      "max_position_embeddings": max_position_embeddings,
      "initializer_range": config.init_std,
      **hf_token_ids(vocab),
      "torch_dtype": torch_dtype,
      "use_cache": True,
  }


# --------------------------------------------------------------------------------------------
# Weights


@dataclasses.dataclass(frozen=True)
class WeightName:
  """One weight under both names. transposed: Hugging Face stores it as [out, in]. layer: the
  index along the leading layers axis of the Decoder's stacked blocks (None outside them)."""

  hf: str
  path: tuple[str | int, ...]  # the parameter's path in the Decoder's nnx.State
  transposed: bool
  layer: int | None = None


def stack_layers(arrays: Mapping[WeightName, Any]) -> dict[tuple[str | int, ...], Any]:
  """Per-weight arrays -> the Decoder's parameters by path: the layers' weights of one path
  stacked in layer order along the leading layers axis (the inverse is `stacked[name.layer]`)."""
  by_path = collections.defaultdict(dict)
  for name, array in arrays.items():
    by_path[name.path][name.layer] = array
  return {path: layers[None] if None in layers else jnp.stack([layers[i] for i in sorted(layers)])
          for path, layers in by_path.items()}


def weight_names(config: ModelConfig) -> list[WeightName]:
  """Every weight of a model, Hugging Face tensor name <-> safejax parameter path."""
  names = [WeightName("model.embed_tokens.weight", ("embed", "embedding"), False)]
  projections = [("self_attn.q_proj", ("attn", "q")), ("self_attn.k_proj", ("attn", "k")),
                 ("self_attn.v_proj", ("attn", "v")), ("self_attn.o_proj", ("attn", "o")),
                 ("mlp.gate_proj", ("mlp", "gate")), ("mlp.up_proj", ("mlp", "up")),
                 ("mlp.down_proj", ("mlp", "down"))]
  for i in range(config.num_layers):
    prefix = f"model.layers.{i}."
    names.append(WeightName(prefix + "input_layernorm.weight", ("blocks", "attn_norm", "scale"), False, i))
    names.append(WeightName(prefix + "post_attention_layernorm.weight", ("blocks", "mlp_norm", "scale"), False, i))
    names += [WeightName(f"{prefix}{hf}.weight", ("blocks", *module, "kernel"), True, i) for hf, module in projections]
  names.append(WeightName("model.norm.weight", ("final_norm", "scale"), False))
  if not config.tie_embeddings:
    names.append(WeightName("lm_head.weight", ("lm_head", "kernel"), True))
  return names


def _tensor_files(hf_dir: str) -> dict[str, str]:
  """Tensor name -> the safetensors file holding it."""
  index = os.path.join(hf_dir, WEIGHTS_INDEX)
  if os.path.exists(index):
    with open(index) as f:
      return {name: os.path.join(hf_dir, file) for name, file in json.load(f)["weight_map"].items()}
  single = os.path.join(hf_dir, WEIGHTS_FILE)
  if os.path.exists(single):
    with safetensors.safe_open(single, framework="numpy") as f:
      return {name: single for name in f.keys()}
  pickles = sorted(n for n in os.listdir(hf_dir) if n.endswith((".bin", ".pt", ".pth")))
  raise FileNotFoundError(
      f"{hf_dir} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX}"
      + (f"; {pickles} are PyTorch pickles, which safejax does not load: save the model with "
         "safe_serialization=True first" if pickles else ""))


def _check_names(files: Mapping[str, str], names: list[WeightName], hf_dir: str) -> None:
  """Every weight is present and nothing unknown is: a wrong config would otherwise pass quietly."""
  expected = {n.hf for n in names}
  missing = sorted(expected - set(files))
  # A tied checkpoint may still store lm_head.weight; like transformers, the tie wins.
  unexpected = sorted(n for n in set(files) - expected
                      if not _DERIVED_TENSORS.fullmatch(n) and n != "lm_head.weight")
  if missing or unexpected:
    raise UnsupportedCheckpointError(
        f"{hf_dir}: the tensors do not match its config.json: missing {missing[:8]}"
        f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")


def decoder_from_hf(hf_dir: str, *, dtype: str = "float32", param_dtype: str = "float32") -> Decoder:
  """Loads a Hugging Face Llama checkpoint folder as a safejax Decoder (on the default device).

  Args:
    hf_dir: folder with config.json and model.safetensors (or shards + model.safetensors.index.json).
    dtype: compute dtype of the safejax model; param_dtype: dtype its parameters are stored in
      (the checkpoint's own dtype, often bfloat16, is cast to it).
  """
  with open(os.path.join(hf_dir, CONFIG_JSON)) as f:
    config = model_config_from_hf(json.load(f), dtype=dtype, param_dtype=param_dtype)
  names = weight_names(config)
  files = _tensor_files(hf_dir)
  _check_names(files, names, hf_dir)
  ignored = sorted(set(files) - {n.hf for n in names})
  if ignored:
    log.info("%s: ignoring %d tensors derived from others: %s", hf_dir, len(ignored), ignored)

  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(config)))
  variables = dict(nnx.to_flat_state(abstract))
  by_file = collections.defaultdict(list)
  for name in names:
    by_file[files[name.hf]].append(name)
  values = {}
  with tqdm(total=len(names), desc="import weights", unit="tensor") as bar:
    for file, file_names in sorted(by_file.items()):
      with safetensors.safe_open(file, framework="numpy") as f:
        for name in file_names:
          array = f.get_tensor(name.hf)
          array = array.T if name.transposed else array
          want = variables[name.path].get_value().shape[0 if name.layer is None else 1:]
          if array.shape != want:
            raise UnsupportedCheckpointError(
                f"{name.hf} has shape {list(array.shape)}{' (transposed)' if name.transposed else ''}, "
                f"the config implies {list(want)}")
          values[name] = jnp.asarray(array, dtype=param_dtype)
          bar.update(1)
  values = stack_layers(values)
  state = nnx.from_flat_state([(path, var.replace(values[path])) for path, var in variables.items()])
  log.info("imported %s: %s parameters", hf_dir, f"{config.num_params():,}")
  return nnx.merge(graphdef, state)


def hf_tensors(model: Decoder, dtype: str | None = None) -> dict[str, np.ndarray]:
  """The model's weights under Hugging Face names, [out, in] projections, optionally cast."""
  params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  tensors = {}
  for name in weight_names(model.cfg):
    array = np.asarray(jax.device_get(params[name.path].get_value()))
    array = array if name.layer is None else array[name.layer]
    array = np.ascontiguousarray(array.T if name.transposed else array)
    tensors[name.hf] = array.astype(jnp.dtype(dtype)) if dtype else array
  return tensors


# --------------------------------------------------------------------------------------------
# Tokenizers and the vocabulary axis

# Noise of a new embedding row, in units of the existing rows' per-dimension standard deviation.
NEW_ROW_NOISE = 0.01


def _edit_vocabulary_rows(model: Decoder, vocab_size: int, edit) -> Decoder:
  """A copy of `model` with vocab_size embedding rows; edit(rows [vocab_size, D] float32, the old
  rows zero-padded) returns the new rows, for the embedding and (transposed) an untied lm head."""
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(dataclasses.replace(model.cfg,
                                                                                       vocab_size=vocab_size))))
  old = dict(nnx.to_flat_state(nnx.state(model)))

  def rows(table: jax.Array, axis: int) -> jax.Array:
    old_rows = np.moveaxis(np.asarray(jax.device_get(table), np.float32), axis, 0)  # [V, D]
    padded = np.concatenate([old_rows, np.zeros((vocab_size - len(old_rows), old_rows.shape[1]), np.float32)])
    return jnp.asarray(np.moveaxis(edit(padded), 0, axis), dtype=table.dtype)

  flat = []
  for path, var in nnx.to_flat_state(abstract):
    value = old[path].get_value()
    if path == ("embed", "embedding"):
      value = rows(value, axis=0)
    elif path == ("lm_head", "kernel"):
      value = rows(value, axis=1)
    flat.append((path, var.replace(value)))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def resize_vocabulary(model: Decoder, vocab_size: int, new_ids: Sequence[int], *, noise: float = NEW_ROW_NOISE,
                      seed: int = 0) -> Decoder:
  """The model with max(vocab_size, its own) embedding rows, the rows of `new_ids` set afresh.

  A new row (of the embedding, and of the lm head's columns when untied) is the mean of the rows
  of the ids below the first new id (the checkpoint's own tokens), plus noise: noise * (those
  rows' per-dimension standard deviation) * N(0, 1), seeded. The mean puts a new token's logit at
  the average logit, so the model's distribution over its own ids barely moves (Hewitt 2021,
  "Initializing new word embeddings for pretrained language models"); the noise keeps the new
  tokens apart so that training can give them different roles. The other rows are copied: the
  logits of the original ids are exactly the checkpoint's.
  """
  new_ids = sorted(set(new_ids))
  size = max(vocab_size, model.cfg.vocab_size)
  if new_ids and not 0 < new_ids[0] <= new_ids[-1] < size:
    raise ValueError(f"new ids {new_ids} outside 1..{size - 1}")
  rng = np.random.default_rng(seed)

  def initialise(rows: np.ndarray) -> np.ndarray:
    if new_ids:
      own = rows[:new_ids[0]]
      rows[new_ids] = own.mean(0) + noise * own.std(0) * rng.standard_normal((len(new_ids), rows.shape[1]))
    return rows

  return _edit_vocabulary_rows(model, size, initialise)


def permute_vocabulary(model: Decoder, order: np.ndarray) -> Decoder:
  """The model whose id i has the embedding row (and lm head column) of `model`'s id order[i];
  ids beyond len(order) keep theirs. Imports apply a vocabulary's `hf_ids`; exports its inverse."""
  order = np.asarray(order)
  if np.array_equal(order, np.arange(len(order))):
    return model
  full = np.concatenate([order, np.arange(len(order), model.cfg.vocab_size)])
  return _edit_vocabulary_rows(model, model.cfg.vocab_size, lambda rows: rows[full])


def chat_template() -> str:
  """safejax's chat format (`format_chat`) as a Jinja chat template for tokenizer_config.json.

  It renders bos_token + format_chat(messages, add_generation_prompt=...) and raises where
  format_chat raises. The bos_token is the start token safejax puts before every sequence: it is
  in the text because transformers' and vLLM's chat paths encode the rendered text without adding
  special tokens.
  """
  roles = dict(ROLE_MARKERS)
  return (
      "{{ bos_token }}"
      "{% for message in messages %}"
      f"{{% if message['role'] not in {list(roles)} %}}"
      "{{ raise_exception('unknown chat role ' ~ message['role']) }}{% endif %}"
      "{% if message['role'] == 'system' and not loop.first %}"
      "{{ raise_exception('a system message may only be the first message') }}{% endif %}"
      "{% set index = loop.index0 %}"
      f"{{% for token in {list(SPECIAL_TOKENS)} %}}{{% if token in message['content'] %}}"
      "{{ raise_exception('message ' ~ index ~ ' contains the reserved token string ' ~ token) }}"
      "{% endif %}{% endfor %}"
      f"{{{{ {roles}[message['role']] + ' ' + message['content'] | trim + '{END_OF_TURN}' }}}}"
      "{% endfor %}"
      f"{{% if add_generation_prompt %}}{ROLE_MARKERS['assistant']}{{% endif %}}")


def save_tokenizer(vocab: Vocabulary, hf_dir: str, *, max_position_embeddings: int = 2048) -> None:
  """tokenizer.json, tokenizer_config.json (special tokens, chat template) and generation_config.json
  (start, eos and pad ids), so that AutoTokenizer.from_pretrained(hf_dir) and generate work.

  Generation stops at eos; chat replies end at <|end_of_turn|>: pass it as another eos_token_id
  for chat (as safejax's server does).
  """
  write_hf_tokenizer(vocab, hf_dir, chat_template=chat_template(), model_max_length=max_position_embeddings)
  with open(os.path.join(hf_dir, GENERATION_CONFIG_JSON), "w") as f:
    json.dump(hf_token_ids(vocab), f, indent=2)
  if isinstance(vocab, SafejaxVocabulary):  # the exact model, which an import of this folder reads
    with open(os.path.join(hf_dir, SENTENCEPIECE_FILE), "wb") as f:
      f.write(vocab.sp_model)


def save_hf(model: Decoder, vocab: Vocabulary, hf_dir: str, *, dtype: str | None = None,
            max_position_embeddings: int = 2048) -> None:
  """Writes config.json, model.safetensors and the tokenizer (`save_tokenizer`) for
  AutoModelForCausalLM / AutoTokenizer.from_pretrained.

  dtype: the stored weights' dtype (e.g. "bfloat16"); None keeps the parameters' dtype.
  """
  if vocab.vocab_size > model.cfg.vocab_size:
    raise ValueError(f"the vocabulary has {vocab.vocab_size} ids but the model only {model.cfg.vocab_size} rows")
  model = permute_vocabulary(model, np.argsort(vocab.hf_ids))  # rows in the tokenizer's own order
  tensors = hf_tensors(model, dtype)
  torch_dtype = str(next(iter(tensors.values())).dtype)
  os.makedirs(hf_dir, exist_ok=True)
  # transformers reads a safetensors file only if its metadata names a framework it knows.
  safetensors.numpy.save_file(tensors, os.path.join(hf_dir, WEIGHTS_FILE), metadata={"format": "pt"})
  config = hf_config_from_model(model.cfg, vocab, torch_dtype=torch_dtype,
                                max_position_embeddings=max_position_embeddings)
  with open(os.path.join(hf_dir, CONFIG_JSON), "w") as f:
    json.dump(config, f, indent=2)
  save_tokenizer(vocab, hf_dir, max_position_embeddings=max_position_embeddings)


# --------------------------------------------------------------------------------------------
# safejax model directories


def save_model_dir(model: Decoder, vocab: Vocabulary, model_dir: str, *, source: str,
                   meta: Mapping[str, Any] | None = None) -> None:
  """Writes `model` as a safejax model directory: step 0 holds the parameters, no optimizer state.

  Refuses a directory that already has checkpoints, and a vocabulary larger than the model's.
  meta: more fields for the checkpoint's meta item (how the import went).
  """
  if vocab.vocab_size > model.cfg.vocab_size:
    raise ValueError(f"the vocabulary has {vocab.vocab_size} ids but the model only {model.cfg.vocab_size} "
                     "embedding rows: use a safejax vocabulary no larger than the checkpoint's vocab_size")
  manager = checkpoints.checkpoint_manager(model_dir, async_save=False)
  if manager.latest_step() is not None:
    manager.close()
    raise FileExistsError(f"{model_dir} already holds checkpoints; import into a new model directory")
  checkpoints.write_model_files(model_dir, model.cfg, vocab)
  meta = {"step": 0, "input_batches_consumed": 0, "imported_from": source,
          "model_config": dataclasses.asdict(model.cfg), **(meta or {})}
  manager.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(nnx.state(model)),
                                          meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()
  manager.close()


# --------------------------------------------------------------------------------------------
# Commands (`safejax import-hf`, `safejax export-hf`)


@gin.configurable
def import_hf(hf_dir: str = gin.REQUIRED, model_dir: str = gin.REQUIRED, vocab_file: str | None = None,
              dtype: str = "float32", param_dtype: str = "float32", new_row_noise: float = NEW_ROW_NOISE,
              seed: int = 0) -> None:
  """Imports a Hugging Face Llama checkpoint folder as a safejax model directory.

  vocab_file: None keeps the checkpoint's tokenizer (its tokenizer.json, or the vocab.model of a
    safejax export), appending safejax's reserved tokens and growing the embeddings for them
    (`resize_vocabulary` with new_row_noise and seed; then `permute_vocabulary` puts the rows in
    the vocabulary's order, `hf_ids`). A safejax SentencePiece model replaces the
    tokenizer instead (see the module docstring).
  dtype, param_dtype: the safejax model's compute and parameter dtypes ("bfloat16" computes
    faster on TPUs; float32 parameters keep continued training exact).
  """
  vocab = load_vocabulary(vocab_file or hf_dir)
  model = decoder_from_hf(hf_dir, dtype=dtype, param_dtype=param_dtype)
  meta: dict[str, Any] = {"vocabulary": str(vocab)}
  if isinstance(vocab, HfTokenizerVocabulary):
    rows = model.cfg.vocab_size
    model = resize_vocabulary(model, vocab.vocab_size, vocab.appended_hf_ids, noise=new_row_noise, seed=seed)
    model = permute_vocabulary(model, vocab.hf_ids)  # pad at id 0, as seqio requires
    meta.update(appended_hf_ids=list(vocab.appended_hf_ids), new_row_noise=new_row_noise, seed=seed)
    log.info("appended %d reserved tokens (tokenizer ids %s): %d -> %d embedding rows", len(vocab.appended_hf_ids),
             list(vocab.appended_hf_ids), rows, model.cfg.vocab_size)
  save_model_dir(model, vocab, model_dir, source=os.path.abspath(hf_dir), meta=meta)
  log.info("wrote %s (step 0)", model_dir)


@gin.configurable
def export_hf(model_dir: str = gin.REQUIRED, hf_dir: str = gin.REQUIRED, step: int | None = None,
              dtype: str | None = None, max_position_embeddings: int = 2048) -> None:
  """Exports a safejax model directory's newest (or given) checkpoint in the Hugging Face layout."""
  model, vocab = checkpoints.load_for_inference(model_dir, step)
  save_hf(model, vocab, hf_dir, dtype=dtype, max_position_embeddings=max_position_embeddings)
  log.info("wrote %s", hf_dir)
