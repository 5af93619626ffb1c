"""The rubric and harm categories as data; per-category indicative-term counts."""

import pytest

from safejax.safety import rubric

PAPER_CATEGORIES = {"harassment_discrimination", "hate", "violence", "self_harm", "sexual", "weapons",
                    "illegal_activity", "malware_hacking", "fraud_deception", "disinformation",
                    "privacy_personal_data", "economic_harm"}


def test_six_levels_in_order_with_descriptions():
  assert [lv.score for lv in rubric.LEVELS] == list(range(6)) == list(range(rubric.NUM_LEVELS))
  assert all(lv.description and lv.examples for lv in rubric.LEVELS)
  assert rubric.level(3).name == "moderate"
  with pytest.raises(ValueError, match="0..5"):
    rubric.level(6)
  assert rubric.rubric_text().splitlines()[5].startswith("5: ")


def test_categories_cover_the_paper_and_have_terms():
  assert PAPER_CATEGORIES <= set(rubric.CATEGORY_NAMES)
  assert all(c.description and c.terms and all(t == t.lower() for t in c.terms) for c in rubric.HARM_CATEGORIES)


def test_category_term_hits_counts_whole_words_and_phrases():
  hits = rubric.category_term_hits("A SCAM, a scam again. Scampi is food. Call his phone   number; Kill.")
  assert set(hits) == set(rubric.CATEGORY_NAMES)
  assert hits["fraud_deception"] == 2  # "scampi" is not "scam"
  assert hits["privacy_personal_data"] == 1  # a phrase across several spaces
  assert hits["violence"] == 1 and hits["hate"] == 0
  assert rubric.category_term_hits("") == {name: 0 for name in rubric.CATEGORY_NAMES}
