"""Llama / SmolLM2 checkpoints in the Hugging Face layout, into and out of safejax.

The Hugging Face layout is a folder holding `config.json` (LlamaForCausalLM fields) and the
weights in `model.safetensors`, or in shards listed by `model.safetensors.index.json`:

  safejax import-hf --gin.import_hf.hf_dir="'SmolLM2-135M'" \
      --gin.import_hf.model_dir="'/tmp/smollm2'" --gin.import_hf.vocab_file="'/tmp/run/vocab.model'"
  safejax export-hf --gin.export_hf.model_dir="'/tmp/m'" --gin.export_hf.hf_dir="'/tmp/m_hf'"

Weights map one to one (`weight_names`). Hugging Face's nn.Linear weights are [out, in] and
safejax's nnx.Linear kernels [in, out], so every projection is transposed; embeddings and RMSNorm
scales are copied. Both models rotate q and k in the rotate-half RoPE layout (each head's features
are [first half | second half], paired i with i + H/2) with the same frequencies, so unlike the
conversion from Meta's original checkpoints no permutation of q/k rows is needed: the tests check
logits against transformers' LlamaForCausalLM.

An imported model becomes a safejax model directory (model_config.json, vocab.model and
checkpoints/0 holding the parameters only), which `safejax.checkpoints.load_for_inference` loads.
Continued (safety) pretraining is a new run that starts from its parameters with a fresh
optimizer state; `train` checks that the run's model config and vocabulary are the imported ones:

  safejax train --gin_file=models/smollm2_135m.gin --gin_file=runs/pretrain_text.gin \
      --gin.train.init_from="'/tmp/smollm2'" --gin.VOCAB="'/tmp/run/vocab.model'" \
      --gin.TEXT_FILES="'/tmp/run/corpus/*.jsonl'" --gin.MODEL_DIR="'/tmp/smollm2_safety'"

Tokenizers: Hugging Face tokenizers (SmolLM2's is byte-level BPE) are not SentencePiece models
with safejax's reserved tokens, so the weights come without one. The import takes the safejax
vocabulary the continued pretraining will use, at most as large as the checkpoint's vocab_size;
its ids name other pieces than the checkpoint's, so the embedding rows start as unrelated vectors
that continued pretraining relearns (the transformer layers keep what they learned). Mapping one
vocabulary onto the other is not done here. Exports carry the safejax SentencePiece model as
`vocab.model` (load it with sentencepiece or `SafejaxVocabulary`) and no Hugging Face tokenizer
files.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
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
from safejax.model import Decoder, ModelConfig, build_model
from safejax.vocab import BOS, SafejaxVocabulary

log = logging.getLogger(__name__)

CONFIG_JSON = "config.json"
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


def hf_config_from_model(config: ModelConfig, vocab: SafejaxVocabulary, *, torch_dtype: str,
                         max_position_embeddings: int) -> dict[str, Any]:
  """A LlamaForCausalLM config.json for a safejax model (readable by transformers 4 and 5).

  RoPE is written both ways, `rope_theta` (transformers 4, vLLM, llama.cpp) and `rope_parameters`
  (transformers 5). safejax's RoPE has no length limit: `max_position_embeddings` only tells
  Hugging Face tools the context the model was meant for.
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
      "bos_token_id": vocab.token_id(BOS),
      "eos_token_id": vocab.eos_id,
      "pad_token_id": vocab.pad_id,
      "torch_dtype": torch_dtype,
      "use_cache": True,
  }


# --------------------------------------------------------------------------------------------
# Weights


@dataclasses.dataclass(frozen=True)
class WeightName:
  """One weight under both names. transposed: Hugging Face stores it as [out, in]."""

  hf: str
  path: tuple[str | int, ...]  # the parameter's path in the Decoder's nnx.State
  transposed: bool


def weight_names(config: ModelConfig) -> list[WeightName]:
  """Every weight of a model, Hugging Face tensor name <-> safejax parameter path."""
  names = [WeightName("model.embed_tokens.weight", ("embed", "embedding"), False)]
  projections = [("self_attn.q_proj", ("attn", "q")), ("self_attn.k_proj", ("attn", "k")),
                 ("self_attn.v_proj", ("attn", "v")), ("self_attn.o_proj", ("attn", "o")),
                 ("mlp.gate_proj", ("mlp", "gate")), ("mlp.up_proj", ("mlp", "up")),
                 ("mlp.down_proj", ("mlp", "down"))]
  for i in range(config.num_layers):
    prefix = f"model.layers.{i}."
    names.append(WeightName(prefix + "input_layernorm.weight", ("blocks", i, "attn_norm", "scale"), False))
    names.append(WeightName(prefix + "post_attention_layernorm.weight", ("blocks", i, "mlp_norm", "scale"), False))
    names += [WeightName(f"{prefix}{hf}.weight", ("blocks", i, *module, "kernel"), True) for hf, module in projections]
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
          want = variables[name.path].get_value().shape
          if array.shape != want:
            raise UnsupportedCheckpointError(
                f"{name.hf} has shape {list(array.shape)}{' (transposed)' if name.transposed else ''}, "
                f"the config implies {list(want)}")
          values[name.path] = jnp.asarray(array, dtype=param_dtype)
          bar.update(1)
  state = nnx.from_flat_state([(path, var.replace(values[path])) for path, var in variables.items()])
  log.info("imported %s: %s parameters", hf_dir, f"{config.num_params():,}")
  return nnx.merge(graphdef, state)


def hf_tensors(model: Decoder, dtype: str | None = None) -> dict[str, np.ndarray]:
  """The model's weights under Hugging Face names, [out, in] projections, optionally cast."""
  params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
  tensors = {}
  for name in weight_names(model.cfg):
    array = np.asarray(jax.device_get(params[name.path].get_value()))
    array = np.ascontiguousarray(array.T if name.transposed else array)
    tensors[name.hf] = array.astype(jnp.dtype(dtype)) if dtype else array
  return tensors


def save_hf(model: Decoder, vocab: SafejaxVocabulary, hf_dir: str, *, dtype: str | None = None,
            max_position_embeddings: int = 2048) -> None:
  """Writes config.json, model.safetensors and vocab.model for LlamaForCausalLM.from_pretrained.

  dtype: the stored weights' dtype (e.g. "bfloat16"); None keeps the parameters' dtype.
  """
  tensors = hf_tensors(model, dtype)
  torch_dtype = str(next(iter(tensors.values())).dtype)
  os.makedirs(hf_dir, exist_ok=True)
  # transformers reads a safetensors file only if its metadata names a framework it knows.
  safetensors.numpy.save_file(tensors, os.path.join(hf_dir, WEIGHTS_FILE), metadata={"format": "pt"})
  config = hf_config_from_model(model.cfg, vocab, torch_dtype=torch_dtype,
                                max_position_embeddings=max_position_embeddings)
  with open(os.path.join(hf_dir, CONFIG_JSON), "w") as f:
    json.dump(config, f, indent=2)
  shutil.copyfile(vocab.sentencepiece_model_file, os.path.join(hf_dir, checkpoints.VOCAB_FILE))


# --------------------------------------------------------------------------------------------
# safejax model directories


def save_model_dir(model: Decoder, vocab: SafejaxVocabulary, model_dir: str, *, source: str) -> None:
  """Writes `model` as a safejax model directory: step 0 holds the parameters, no optimizer state.

  Refuses a directory that already has checkpoints, and a vocabulary larger than the model's.
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
          "model_config": dataclasses.asdict(model.cfg)}
  manager.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(nnx.state(model)),
                                          meta=ocp.args.JsonSave(meta)))
  manager.wait_until_finished()
  manager.close()


# --------------------------------------------------------------------------------------------
# Commands (`safejax import-hf`, `safejax export-hf`)


@gin.configurable
def import_hf(hf_dir: str = gin.REQUIRED, model_dir: str = gin.REQUIRED, vocab_file: str = gin.REQUIRED,
              dtype: str = "float32", param_dtype: str = "float32") -> None:
  """Imports a Hugging Face Llama checkpoint folder as a safejax model directory.

  vocab_file: a safejax SentencePiece vocabulary (see the module docstring on tokenizers).
  dtype, param_dtype: the safejax model's compute and parameter dtypes ("bfloat16" computes
  faster on TPUs; float32 parameters keep continued training exact).
  """
  vocab = SafejaxVocabulary(vocab_file)
  model = decoder_from_hf(hf_dir, dtype=dtype, param_dtype=param_dtype)
  save_model_dir(model, vocab, model_dir, source=os.path.abspath(hf_dir))
  log.info("wrote %s (step 0)", model_dir)


@gin.configurable
def export_hf(model_dir: str = gin.REQUIRED, hf_dir: str = gin.REQUIRED, step: int | None = None,
              dtype: str | None = None, max_position_embeddings: int = 2048) -> None:
  """Exports a safejax model directory's newest (or given) checkpoint in the Hugging Face layout."""
  model, vocab = checkpoints.load_for_inference(model_dir, step)
  save_hf(model, vocab, hf_dir, dtype=dtype, max_position_embeddings=max_position_embeddings)
  log.info("wrote %s", hf_dir)
