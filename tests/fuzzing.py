"""Shared pieces of the fuzz suites (test_fuzz_*.py): hypothesis settings, hostile-text
strategies and a tally of what was tried.

The suites run in CI with a bounded, derandomized example budget (the same inputs every run, so
CI cannot flake). To explore further, raise the budget and let hypothesis draw fresh inputs:

    SAFEJAX_FUZZ_EXAMPLES=2000 SAFEJAX_FUZZ_RANDOM=1 pytest tests/test_fuzz_data.py

With SAFEJAX_FUZZ_LOG=path, each suite appends its tally (input kind -> outcome -> count) to
`path` as JSON lines when its module finishes.
"""

from __future__ import annotations

import collections
import json
import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from safejax.vocab import SPECIAL_TOKENS


def fuzz_settings(max_examples: int) -> settings:
  """`max_examples` inputs (scaled by SAFEJAX_FUZZ_EXAMPLES / 100 when set), no deadline."""
  scale = int(os.environ.get("SAFEJAX_FUZZ_EXAMPLES", "100")) / 100
  return settings(
      max_examples=max(1, int(max_examples * scale)), deadline=None, database=None,
      derandomize=not os.environ.get("SAFEJAX_FUZZ_RANDOM"), print_blob=True,
      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture])


# Every proper prefix and suffix of every reserved token, and the tokens themselves.
FRAGMENTS = sorted({t[:i] for t in SPECIAL_TOKENS for i in range(1, len(t))}
                   | {t[i:] for t in SPECIAL_TOKENS for i in range(1, len(t))} | set(SPECIAL_TOKENS))
LONE_SURROGATES = ("\ud800", "\udbff", "\udc00", "\udfff")


def _split_token_around(parts: tuple[str, int, str]) -> str:
  """token[:k] + inner + token[k:]: a token that reappears once `inner` is removed."""
  token, k, inner = parts
  k = 1 + k % (len(token) - 1)
  return token[:k] + inner + token[k:]


def hostile_text(surrogates: bool = False) -> st.SearchStrategy[str]:
  """Arbitrary unicode interleaved with reserved-token fragments, whole tokens, and tokens nested
  inside each other (optionally lone surrogates too)."""
  leaves = [st.text(max_size=12), st.sampled_from(FRAGMENTS), st.sampled_from(SPECIAL_TOKENS),
            st.sampled_from(["<", ">", "|", "_", " ", "\n", "\x00", "\u2581", "\ufeff"])]
  if surrogates:
    leaves.append(st.sampled_from(LONE_SURROGATES))
  return st.recursive(
      st.one_of(*leaves),
      lambda inner: st.one_of(
          st.lists(inner, max_size=6).map("".join),
          st.tuples(st.sampled_from(SPECIAL_TOKENS), st.integers(0, 64), inner).map(_split_token_around)),
      max_leaves=16)


class Tally:
  """Counts hostile inputs by kind and outcome, for the closing report of issue 13."""

  def __init__(self, suite: str):
    self.suite = suite
    self.counts: collections.Counter = collections.Counter()

  def add(self, kind: str, outcome: str, n: int = 1) -> None:
    self.counts[kind, outcome] += n

  def write(self) -> None:
    path = os.environ.get("SAFEJAX_FUZZ_LOG")
    if not path:
      return
    with open(path, "a", encoding="utf-8") as f:
      for (kind, outcome), n in sorted(self.counts.items()):
        f.write(json.dumps({"suite": self.suite, "input": kind, "outcome": outcome, "count": n}) + "\n")


def tally_fixture(suite: str):
  """A module-scoped fixture yielding a `Tally` written out when the module's tests end."""

  @pytest.fixture(scope="module")
  def tally():
    t = Tally(suite)
    yield t
    t.write()

  return tally
