"""Routing tables and segment scoring."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from data_fakes import KeywordScorer
from safejax.data.routing import REFUSE, REPHRASE, TAG, RoutingTable, route
from safejax.data.scoring import score_documents, split_segments


def _record(score: int) -> dict:
  return {"id": f"s/{score}", "source": "s", "text": "t", "score": score, "segments": [[0, 1, score]]}


def test_default_table_is_the_papers():
  table = RoutingTable()
  assert [table.primary(s) for s in range(6)] == ["keep", "rephrase", "rephrase", "rephrase", "refuse", "refuse"]
  assert route(_record(0), table) == [("keep", {**_record(0), "route": "keep"})]
  assert [r for r, _ in route(_record(2), table)] == [REPHRASE]
  assert [r for r, _ in route(_record(3), table)] == [REPHRASE, TAG]
  pairs = route(_record(5), table)
  assert [r for r, _ in pairs] == [REFUSE, TAG] and all(rec["route"] == REFUSE for _, rec in pairs)


def test_tag_as_primary_route_gets_no_second_copy():
  table = RoutingTable(keep=(0,), rephrase=(1, 2), refuse=(), tag=(3, 4, 5), tag_copy=(3, 4, 5))
  assert route(_record(4), table) == [(TAG, {**_record(4), "route": TAG})]


@pytest.mark.parametrize("kwargs, message", [
    (dict(keep=(0, 1)), "exactly one primary route"),
    (dict(refuse=(4,)), "exactly one primary route"),
    (dict(keep=(0, 7)), "outside 0..5"),
    (dict(tag_copy=(0, 5)), "tag_copy"),
])
def test_bad_tables_are_rejected(kwargs, message):
  with pytest.raises(ValueError, match=message):
    RoutingTable(**kwargs)


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from("ab \n"), max_size=400), max_chars=st.integers(1, 60))
def test_segments_cover_the_text_exactly_and_respect_the_length(text, max_chars):
  spans = split_segments(text, max_chars)
  assert spans[0][0] == 0 and spans[-1][1] == len(text)
  assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
  assert all(0 < end - start <= max_chars for start, end in spans) or text == ""


def test_segments_merge_whole_lines_and_cut_only_overlong_ones():
  text = "first line\nsecond line\n" + "x" * 30 + "\nlast"
  spans = split_segments(text, 25)
  assert [text[a:b] for a, b in spans] == ["first line\nsecond line\n", "x" * 25, "x" * 5 + "\nlast"]
  text = "a few words " * 5
  assert [text[a:b] for a, b in split_segments(text, 25)] == ["a few words a few words", " a few words a few words",
                                                              " a few words "]


def test_document_score_is_the_max_over_segments():
  text = "calm words here\n" * 5 + "an attack here\n" + "calm again\n" * 5
  docs = [{"id": "d/1", "source": "d", "text": text}, {"id": "d/2", "source": "d", "text": "calm", "score": 2}]
  scored = score_documents(docs, KeywordScorer(), segment_chars=40)
  assert scored[0]["score"] == 4
  assert [s for *_, s in scored[0]["segments"]].count(4) == 1
  assert scored[1]["score"] == 2 and scored[1]["segments"] == [[0, 4, 2]]  # a given score is kept


def test_unscorable_documents_are_dead_lettered_not_guessed():
  docs = [{"id": "d/1", "source": "d", "text": "fine\nunscorable part"}, {"id": "d/2", "source": "d", "text": "ok"}]
  out = score_documents(docs, KeywordScorer(), segment_chars=20)
  assert out[0]["stage"] == "score" and out[0]["reason"] == "unscored"
  assert out[1]["score"] == 0
  out = score_documents(docs, None)
  assert [o["reason"] for o in out] == ["no_scorer", "no_scorer"]


def test_scorer_shape_mismatch_is_an_error():
  class Broken:
    def score(self, texts):
      return np.zeros(len(texts) + 1, np.int32)

  with pytest.raises(ValueError, match="shape"):
    score_documents([{"id": "a", "source": "s", "text": "x"}], Broken())
