"""The Flax decoder."""
from safejax.model.llama import Decoder, KVCache, ModelConfig, build_model, param_count

__all__ = ["Decoder", "KVCache", "ModelConfig", "build_model", "param_count"]
