"""SeqIO tasks over a pipeline run and the ablation-ladder mixtures: they produce examples."""

import itertools
import json

import numpy as np
import pytest
import seqio

from safejax.data import manifest as manifest_lib, shards
from safejax.data.pipeline import PipelineConfig, run_loop
from safejax.data.sources import SourceSpec
from safejax.vocab import train_sentencepiece
from tasks.safety_mixtures import LADDER, cache_tasks, register_safety_mixtures

WORDS = ["river", "mountain", "school", "garden", "library", "music", "science", "history", "ocean", "forest"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A pipeline run over 48 documents with given scores, and a vocabulary trained on its streams."""
  root = tmp_path_factory.mktemp("mix")
  rows = [{"id": i, "score": i % 6, "title": f"Topic {WORDS[i % 10]}",
           "text": " ".join(WORDS[(i + k) % 10] for k in range(60))} for i in range(48)]
  (root / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  spec = SourceSpec(name="toy", pattern=str(root / "in.jsonl"), id_field="id", score_field="score",
                    keep_fields=("title",))
  out = root / "out"
  run_loop(PipelineConfig(sources=[spec], output_dir=str(out), num_shards=2, tag_p=0.1))
  texts = [r.get("text") or " ".join(t["text"] for t in r["turns"])
           for s in ("raw", "rephrase", "refuseweb", "moral_education")
           for r in shards.read_shards(manifest_lib.stream_files(str(out), s))]
  vocab = train_sentencepiece(texts, str(root / "spm.model"), vocab_size=500)
  return out, vocab


def test_ladder_mixtures_and_packed_examples(run):
  out, vocab = run
  names = register_safety_mixtures(str(out), vocab, prefix="t1")
  assert set(names.mixtures) == {rung for rung, _ in LADDER}
  assert all(names.tokens[s] > 0 for s in names.tokens)
  for rung, streams in LADDER:
    mixture = seqio.get_mixture_or_task(names.mixtures[rung])
    assert sorted(t.name for t in mixture.tasks) == sorted(f"t1_{s}" for s in streams), rung
  # What the trainer does with a mixture: pack it into fixed-length decoder features.
  ds = seqio.get_mixture_or_task(names.mixtures["tags"]).get_dataset({"targets": 32}, split="train", seed=0)
  batch = next(seqio.DecoderFeatureConverter(pack=True)(ds, {"targets": 32}).as_numpy_iterator())
  assert batch["decoder_target_tokens"].shape == (32,) and batch["decoder_segment_ids"].max() >= 1


@pytest.mark.slow
def test_every_rung_of_the_ladder_produces_examples(run):
  out, vocab = run
  names = register_safety_mixtures(str(out), vocab, prefix="t5")
  for rung, mixture in names.mixtures.items():
    ds = seqio.get_mixture_or_task(mixture).get_dataset({"targets": 32}, split="train", shuffle=False)
    example = next(ds.as_numpy_iterator())
    assert 0 < len(example["targets"]) <= 32 and example["targets"].max() > 3, rung


def test_rates_are_tokens_times_weights(run):
  out, vocab = run
  names = register_safety_mixtures(str(out), vocab, prefix="t2", stream_weights={"refuseweb": 3.0})
  mixture = seqio.get_mixture_or_task(names.mixtures["tags"])
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates["t2_keep_sham"] == names.tokens["keep"]  # the tags rung reads keep with the sham tag
  assert rates["t2_refuseweb"] == 3.0 * names.tokens["refuseweb"]
  assert set(rates) == {f"t2_{s}" for s in ("keep_sham", "rephrase", "refuseweb", "moral_education", "tagged")}
  # Exact token count: the whole stream fits in the sample.
  texts = [r["text"] for r in shards.read_shards(manifest_lib.stream_files(str(out), "keep"))]
  assert names.tokens["keep"] == sum(len(vocab.tokenizer.encode(t)) for t in texts)
  with pytest.raises(ValueError, match="unknown streams"):
    register_safety_mixtures(str(out), vocab, prefix="t3", stream_weights={"nope": 1.0})


def test_tasks_tokenize_tags_and_renamed_dialogues(run):
  out, vocab = run
  names = register_safety_mixtures(str(out), vocab, prefix="t4")
  tagged = seqio.get_mixture_or_task(names.tasks["tagged"]).get_dataset({"targets": 4096}, split="train", shuffle=False)
  tag_ids = sum(int(np.sum(ex["targets"] == vocab.harm_tag_id)) for ex in tagged.as_numpy_iterator())
  assert tag_ids == manifest_lib.read_manifest(str(out))["tags"]["inserted"] > 0
  for task in ("keep", "rephrase", "moral_education"):
    ds = seqio.get_mixture_or_task(names.tasks[task]).get_dataset({"targets": 4096}, split="train", shuffle=False)
    assert all(vocab.harm_tag_id not in ex["targets"] for ex in ds.as_numpy_iterator()), task
  dialogues = seqio.get_mixture_or_task(names.tasks["refuseweb"]).get_dataset({"targets": 4096}, split="train",
                                                                             shuffle=False)
  texts = [vocab.decode(ex["targets"].tolist()) for ex in itertools.islice(dialogues.as_numpy_iterator(), 8)]
  assert texts and not any(t.startswith("User:") for t in texts)
  again = [vocab.decode(ex["targets"].tolist()) for ex in itertools.islice(dialogues.as_numpy_iterator(), 8)]
  assert texts == again  # the renaming is the same every epoch (and in a cache)


@pytest.mark.slow
def test_seqio_cache_tasks_main_caches_the_streams(run, tmp_path):
  out, vocab = run
  cache = tmp_path / "cache"
  cache_tasks(str(out), vocab.sentencepiece_model_file, str(cache), prefix="cached")
  names = register_safety_mixtures(str(out), vocab, prefix="cached")
  seqio.add_global_cache_dirs([str(cache)])
  for stream in ("keep", "refuseweb"):
    task = seqio.get_mixture_or_task(names.tasks[stream])
    cached = [ex["targets"].tolist() for ex in task.get_dataset({"targets": 64}, split="train", use_cached=True,
                                                              shuffle=False).as_numpy_iterator()]
    fresh = [ex["targets"].tolist() for ex in task.get_dataset({"targets": 64}, split="train", use_cached=False,
                                                             shuffle=False).as_numpy_iterator()]
    assert cached and sorted(cached) == sorted(fresh), stream


def test_the_tags_rung_reads_as_many_sham_tags_in_safe_text_as_it_has_harm_tags(run):
  from safejax.vocab import HARM_TAG, SHAM_TAG

  out, vocab = run
  names = register_safety_mixtures(str(out), vocab, prefix="t6")
  manifest = manifest_lib.read_manifest(str(out))
  keep = [r["text"] for r in shards.read_shards(manifest_lib.stream_files(str(out), "keep"))]
  assert names.sham_p == pytest.approx(manifest["tags"]["inserted"] / sum(len(t.split()) for t in keep), rel=1e-6)
  task = seqio.get_mixture_or_task(names.tasks["keep_sham"])
  read = lambda: [vocab.decode(ex["targets"].tolist()) for ex in task.get_dataset(  # noqa: E731
      {"targets": 4096}, split="train", shuffle=False).as_numpy_iterator()]
  texts = read()
  shams = sum(t.count(SHAM_TAG) for t in texts)
  expected = manifest["tags"]["inserted"]
  assert expected > 0 and abs(shams - expected) < 4 * expected ** 0.5 + 3  # a binomial draw around the tags' count
  assert not any(HARM_TAG in t for t in texts) and read() == texts  # only the sham; the same every epoch
  assert sorted(t.replace(SHAM_TAG, "") for t in texts) == sorted(keep)  # nothing else changed
