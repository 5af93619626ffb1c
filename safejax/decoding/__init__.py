"""Decoding, in three layers (t5x keeps the same split between decoding.py, models.py and infer.py):

  search.py    the pure algorithms and their hooks: greedy / sampling, beam search
  safebeam.py  SafeBeam and its candidate filter, built from beam search's pieces
  runner.py    a Flax `Decoder` behind `tokens_to_logits`, the jit cache, `generate` (token ids)
  generate.py  text in, text out: `DecodingConfig`, `generate_texts`, `safejax decode`

The names below are the package's public surface; import them from here.
"""

from safejax.decoding.generate import (DecodedText, DecodingConfig, decode, generate_texts, read_prompts,
                                      reserved_tokens_in)
from safejax.decoding.runner import (METHODS, TokenHistory, cached_tokens_to_logits, detokenize,
                                     full_recompute_tokens_to_logits, generate)
from safejax.decoding.safebeam import RandomDropFilter, harm_tag_filter, safebeam
from safejax.decoding.search import (NEG_INF, CandidateFilter, Candidates, DecodeResult, InitCache, LogitsProcessor,
                                     PenalizeToken, SuppressToken, TokensToLogits, beam_search, brevity_penalty, chain,
                                     left_pad, sample, top_k_filter, top_p_filter)

__all__ = [
    "DecodedText", "DecodingConfig", "decode", "generate_texts", "read_prompts", "reserved_tokens_in", "METHODS", "TokenHistory",
    "cached_tokens_to_logits", "detokenize", "full_recompute_tokens_to_logits", "generate", "harm_tag_filter", "RandomDropFilter",
    "safebeam", "NEG_INF", "CandidateFilter", "Candidates", "DecodeResult", "InitCache", "LogitsProcessor",
    "PenalizeToken", "SuppressToken", "TokensToLogits", "beam_search", "brevity_penalty", "chain", "left_pad",
    "sample", "top_k_filter", "top_p_filter",
]
