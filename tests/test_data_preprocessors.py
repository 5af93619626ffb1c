"""RefuseWeb rendering at tokenization time: speakers renamed per example, seeded, deterministic."""

import collections

import tensorflow as tf

from tasks.preprocessors import NAMES, ROLE_PAIRS, render_refuseweb, render_turns, speaker_names
from safejax.vocab import ASSISTANT, END_OF_TURN, USER

ROLES, TEXTS = ["user", "assistant", "user", "assistant"], ["Tell me.", "No, here is why.", "Why?", "Because."]


def test_speakers_are_renamed_and_never_user_or_assistant():
  seen = collections.Counter()
  for i in range(400):
    text = render_turns(ROLES, TEXTS, f"doc/{i}/refuseweb")
    asker, helper = speaker_names(f"doc/{i}/refuseweb", 0)
    assert asker != helper
    assert text == f"{asker}: Tell me.\n\n{helper}: No, here is why.\n\n{asker}: Why?\n\n{helper}: Because."
    assert "User:" not in text and "Assistant:" not in text
    seen[asker, helper] += 1
  role_pairs = sum(n for (a, h), n in seen.items() if (a, h) in ROLE_PAIRS or a.endswith(" A"))
  assert 120 < role_pairs < 280  # about half role pairs, half first names
  assert len(seen) > 100 and {a for a, _ in seen} & set(NAMES)


def test_renaming_is_deterministic_per_example_and_seed():
  assert render_turns(ROLES, TEXTS, "x") == render_turns(ROLES, TEXTS, "x")
  renders = {render_turns(ROLES, TEXTS, "x", seed=s) for s in range(20)}
  assert len(renders) > 5


def test_chat_template_share():
  chat = render_turns(ROLES, TEXTS, "x", chat_template_rate=1.0)
  assert chat.startswith(f"{USER} Tell me.{END_OF_TURN}{ASSISTANT} No, here is why.{END_OF_TURN}")
  share = sum(USER in render_turns(ROLES, TEXTS, f"d{i}", chat_template_rate=0.25) for i in range(800)) / 800
  assert 0.2 < share < 0.3


def test_tf_preprocessor_matches_the_python_function():
  examples = [{"id": f"doc/{i}/refuseweb", "turn_roles": ROLES[: 2 + 2 * (i % 2)], "turn_texts": TEXTS[: 2 + 2 * (i % 2)]}
              for i in range(6)]
  ds = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature={
      "id": tf.TensorSpec([], tf.string), "turn_roles": tf.TensorSpec([None], tf.string),
      "turn_texts": tf.TensorSpec([None], tf.string)})
  out = list(render_refuseweb(ds, seed=3).as_numpy_iterator())
  assert [o["text"].decode() for o in out] == [
      render_turns(e["turn_roles"], e["turn_texts"], e["id"], seed=3) for e in examples]
