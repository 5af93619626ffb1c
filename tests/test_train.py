"""The trainer: learning, metrics, exact resume after a crash, keep-N, other meshes, non-finite loss."""

import json
import os

import numpy as np
import pytest

import tasks
from safejax import UserError, partitioning
from safejax import checkpoints
from safejax import train as T
from safejax.model import ModelConfig

TINY = ModelConfig(num_layers=2, embed_dim=32, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64)


@pytest.fixture(scope="module")
def task(tiny_corpus, tiny_vocab):
  tasks.register_text_task("test_tiny_text", str(tiny_corpus), tiny_vocab.sentencepiece_model_file)
  return "test_tiny_text"


def run(task, model_dir, steps, **kw):
  args = dict(model_dir=str(model_dir), mixture_or_task_name=task, train_steps=steps, batch_size=8,
              sequence_length=32, model_config=TINY, optimizer=T.OptimizerConfig(learning_rate=1e-2, warmup_steps=2),
              log_every=1, checkpoint_every=4, progress=False, async_checkpointing=True)
  args.update(kw)
  return T.train(**args)


def steps_on_disk(model_dir):
  return sorted(int(d) for d in os.listdir(os.path.join(model_dir, "checkpoints")) if d.isdigit())


@pytest.fixture(scope="module")
def reference_run(task, tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("reference")
  run(task, model_dir, 12)
  return model_dir


def test_learns_and_logs_metrics(reference_run):
  metrics = checkpoints.read_metrics(str(reference_run))
  assert [m["step"] for m in metrics] == list(range(1, 13))
  for key in ("loss", "perplexity", "learning_rate", "grad_norm", "tokens_per_s", "mfu"):
    assert all(np.isfinite(m[key]) for m in metrics), key
  assert metrics[-1]["loss"] < metrics[0]["loss"] - 0.5
  assert metrics[2]["learning_rate"] == pytest.approx(1e-2)  # step 3 runs at the peak after a 2-step warm-up
  assert metrics[-1]["learning_rate"] < metrics[2]["learning_rate"]  # cosine decay
  assert metrics[0]["perplexity"] == pytest.approx(np.exp(metrics[0]["nll"]), rel=1e-6)
  assert any(f.startswith("events") for f in os.listdir(reference_run / "tensorboard"))
  assert steps_on_disk(reference_run) == [4, 8, 12]


class Crash(Exception):
  pass


def test_resume_after_crash_reproduces_losses(task, reference_run, tmp_path, monkeypatch):
  real_next, real_iterator = T.InputIterator.__next__, T.make_train_iterator
  consumed, start_batches = [], []

  def crashing_next(self):
    if len(consumed) == 6:  # dies during step 7, after checkpoint 4
      raise Crash()
    consumed.append(1)
    return real_next(self)

  def recording_iterator(*args, **kwargs):
    start_batches.append(kwargs.get("start_batch", 0))
    return real_iterator(*args, **kwargs)

  monkeypatch.setattr(T.InputIterator, "__next__", crashing_next)
  monkeypatch.setattr(T, "make_train_iterator", recording_iterator)
  with pytest.raises(Crash):
    run(task, tmp_path, 12)
  assert steps_on_disk(tmp_path) == [4]
  monkeypatch.setattr(T.InputIterator, "__next__", real_next)
  run(task, tmp_path, 12)  # the same command again
  assert start_batches == [0, 0]  # the resumed input restored its iterator: no batch was re-read
  resumed = {m["step"]: m["loss"] for m in checkpoints.read_metrics(str(tmp_path))}
  reference = {m["step"]: m["loss"] for m in checkpoints.read_metrics(str(reference_run))}
  for step in range(5, 13):
    assert resumed[step] == reference[step], step  # bit-for-bit on the same mesh


def test_input_resumes_from_its_checkpoint_without_rereading(tiny_corpus, tiny_vocab, tmp_path, monkeypatch):
  """300 batches in (two passes over the corpus), a restored iterator continues exactly where it
  stopped and reads a few documents to do so; skipping re-reads every document of those batches.
  The task is a plain `register_text_task` over a jsonl corpus: its tf.data line reader and
  stateless parse are what tf.data can checkpoint."""
  import orbax.checkpoint as ocp

  from tasks import text

  reads = []
  document = text._document

  def counted_document(*args):
    reads.append(1)
    return document(*args)

  monkeypatch.setattr(text, "_document", counted_document)
  task = "test_resume_text"
  tasks.register_text_task(task, str(tiny_corpus), tiny_vocab.sentencepiece_model_file)
  consumed = 300
  batches = T.make_train_iterator(task, 32, 8, seed=0)
  expected = [next(batches) for _ in range(consumed + 2)][consumed:]
  batches = T.make_train_iterator(task, 32, 8, seed=0)
  for _ in range(consumed):
    next(batches)
  manager = checkpoints.checkpoint_manager(str(tmp_path), async_save=False)
  manager.save(consumed, args=ocp.args.Composite(input=T.InputSave(batches)))
  assert T.has_input_state(manager, consumed)

  def read_two(batches):
    reads.clear()
    got = [next(batches), next(batches)]
    for batch, want in zip(got, expected):
      for key in T.MODEL_FEATURES:
        np.testing.assert_array_equal(batch[key], want[key], err_msg=key)
    return len(reads)

  restored = T.make_train_iterator(task, 32, 8, seed=0)
  reads.clear()
  manager.restore(consumed, args=ocp.args.Composite(input=T.InputRestore(restored)))
  manager.close()
  restore_reads = len(reads) + read_two(restored)
  skip_reads = read_two(T.make_train_iterator(task, 32, 8, seed=0, start_batch=consumed))
  assert skip_reads > 400  # more than the corpus: the skip re-read both passes
  assert restore_reads < skip_reads / 10, (restore_reads, skip_reads)


def test_resume_onto_another_mesh(task, tmp_path):
  import shutil

  first, second = tmp_path / "same_mesh", tmp_path / "other_mesh"
  run(task, first, 8, keep_checkpoints=1)
  shutil.copytree(first, second)
  run(task, first, 12, keep_checkpoints=1)
  run(task, second, 12, mesh=partitioning.MeshConfig(data=2, fsdp=2, tensor=2), keep_checkpoints=1)
  same = {m["step"]: m["loss"] for m in checkpoints.read_metrics(str(first))}
  other = {m["step"]: m["loss"] for m in checkpoints.read_metrics(str(second))}
  # Same maths, other reduction order on the 2x2x2 mesh: float32 rounding only.
  np.testing.assert_allclose([other[s] for s in range(9, 13)], [same[s] for s in range(9, 13)], rtol=1e-4)
  assert steps_on_disk(second) == [12]  # keep-N = 1


def test_load_for_inference_matches_training_params(reference_run):
  model, vocab = checkpoints.load_for_inference(str(reference_run))
  assert vocab.vocab_size == model.cfg.vocab_size
  ids = np.array([vocab.encode("The river watched the morning light.")], np.int32)
  logits, _ = model(ids)
  assert logits.shape == (1, ids.shape[1], vocab.vocab_size)
  earlier, _ = checkpoints.load_for_inference(str(reference_run), step=4)
  assert not np.allclose(earlier(ids)[0], logits)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(task, tmp_path):
  run(task, tmp_path, 4)
  bad = T.OptimizerConfig(learning_rate=1e-2, warmup_steps=2, z_loss=float("nan"))
  with pytest.raises(T.NonFiniteLossError, match="loss is nan at step 5"):
    run(task, tmp_path, 12, optimizer=bad)
  assert steps_on_disk(tmp_path) == [4]
  model, _ = checkpoints.load_for_inference(str(tmp_path))  # still loadable
  assert np.isfinite(np.asarray(model.embed.embedding[...])).all()


def test_vocab_mismatch_is_rejected(task, tmp_path):
  with pytest.raises(ValueError, match="vocab_size 10 < vocabulary size"):
    run(task, tmp_path, 1, model_config=ModelConfig(vocab_size=10))


@pytest.fixture(scope="module")
def chat_task(tmp_path_factory, tiny_vocab):
  import json

  path = tmp_path_factory.mktemp("chat") / "sft.jsonl"
  with open(path, "w") as f:
    for i in range(40):
      f.write(json.dumps({"messages": [{"role": "user", "content": f"Describe the river number {i}."},
                                       {"role": "assistant", "content": "The river watched the morning light."}]}) + "\n")
  tasks.register_chat_task("test_tiny_chat", str(path), tiny_vocab.sentencepiece_model_file)
  return "test_tiny_chat"


def test_chat_task_weights_only_the_reply(chat_task, tiny_vocab):
  from safejax.vocab import ASSISTANT, END_OF_TURN

  batch = next(T.make_train_iterator(chat_task, 160, 2, seed=0))
  first = batch["decoder_segment_ids"][0] == 1  # the first packed conversation of row 0
  weights, targets = batch["decoder_loss_weights"][0][first], batch["decoder_target_tokens"][0][first]
  reply = [t for t, w in zip(targets, weights) if w]
  assert tiny_vocab.decode(reply[:-1]) == "The river watched the morning light." + END_OF_TURN
  assert reply[-1] == tiny_vocab.eos_id
  prompt = [t for t, w in zip(targets, weights) if not w and t]
  assert prompt[-1] == tiny_vocab.token_id(ASSISTANT)
  # tokenizing prompt and reply apart gives the ids of the whole conversation tokenized at once
  assert prompt + reply[:-1] == tiny_vocab.encode(tiny_vocab.decode(prompt + reply[:-1]))


def test_an_iterator_tf_data_cannot_serialize_saves_no_position_and_says_so(tmp_path, caplog):
  """A pipeline with a stateful Python function (tf.py_function; a Hugging Face tokenizer's input
  hit the same "PyFunc is stateful") cannot be checkpointed: the input item stays empty, a warning
  says so once, and `has_input_state` sends resume to the skip fallback."""
  import tensorflow as tf
  from etils import epath

  ds = tf.data.Dataset.from_tensor_slices({"x": ["a", "b", "c"]}).repeat()
  batches = T.InputIterator(ds.map(lambda ex: {"x": tf.py_function(lambda t: t, [ex["x"]], tf.string)}))
  next(batches.iterator)
  handler = T.InputCheckpointHandler()
  with caplog.at_level("WARNING", logger="safejax.train"):
    for step in (1, 2):
      (tmp_path / str(step) / "input").mkdir(parents=True)
      handler.save(epath.Path(tmp_path / str(step) / "input"), T.InputSave(batches))
  assert batches.checkpointable is False and caplog.text.count("cannot be checkpointed") == 1
  assert not any((tmp_path / "1" / "input").iterdir()) and not any((tmp_path / "2" / "input").iterdir())

  class Manager:
    directory = tmp_path

  assert not T.has_input_state(Manager(), 1)


def test_a_harm_tagged_chat_record_puts_the_loss_on_its_tags(tmp_path, tiny_vocab):
  import json

  from safejax.vocab import HARM_TAG, USER

  path = tmp_path / "tagged.jsonl"
  record = {"messages": [{"role": "user", "content": f"Describe the{HARM_TAG} river rite."},
                         {"role": "assistant", "content": "No."}], "harm_tagged": True}
  path.write_text("\n".join(json.dumps(record) for _ in range(8)) + "\n")
  tasks.register_chat_task("test_tiny_tagged_chat", str(path), tiny_vocab.sentencepiece_model_file)
  batch = next(T.make_train_iterator("test_tiny_tagged_chat", 64, 2, seed=0))
  first = batch["decoder_segment_ids"][0] == 1
  weighted = batch["decoder_target_tokens"][0][first][batch["decoder_loss_weights"][0][first] > 0].tolist()
  assert tiny_vocab.token_id(USER) in weighted[:2] and tiny_vocab.token_id(HARM_TAG) in weighted  # [dummy prefix,] USER


def test_finetune_starts_from_base_parameters(chat_task, reference_run, tmp_path):
  base, _ = checkpoints.load_for_inference(str(reference_run))
  run(chat_task, tmp_path, 4, init_from=str(reference_run),
      optimizer=T.OptimizerConfig(learning_rate=1e-12, warmup_steps=0))
  tuned, _ = checkpoints.load_for_inference(str(tmp_path))
  np.testing.assert_allclose(tuned.embed.embedding[...], base.embed.embedding[...], atol=1e-6)
  fresh_loss = checkpoints.read_metrics(str(reference_run))[0]["loss"]
  assert checkpoints.read_metrics(str(tmp_path))[0]["loss"] < fresh_loss  # starts where the base model is


def test_init_from_rejects_another_architecture(task, reference_run, tmp_path):
  import dataclasses

  other = dataclasses.replace(TINY, mlp_dim=96)
  with pytest.raises(ValueError, match="different architecture"):
    run(task, tmp_path, 1, init_from=str(reference_run), model_config=other)


# --------------------------------------------------------------------------------------------
# A Hugging Face byte-level BPE vocabulary


@pytest.fixture(scope="module")
def bpe_vocab_dir(tmp_path_factory, tiny_bpe_dir):
  """tiny_bpe_dir with a start token of its own (<|begin|>, id 400), as a model directory holds it."""
  from tokenizers import AddedToken, Tokenizer

  from safejax.vocab import HfTokenizerVocabulary, save_vocabulary

  tokenizer = Tokenizer.from_file(str(tiny_bpe_dir / "tokenizer.json"))
  tokenizer.add_special_tokens([AddedToken("<|begin|>", special=True)])
  vocab = HfTokenizerVocabulary(tokenizer.to_str(), {"bos_token": "<|begin|>", "eos_token": "<|endoftext|>"})
  folder = tmp_path_factory.mktemp("bpe_vocab")
  save_vocabulary(vocab, str(folder))
  return folder


def test_byte_level_chat_task_keeps_the_template_space(tmp_path, bpe_vocab_dir):
  """Without a dummy prefix the reply starts with the template's space: prompt + reply are the ids
  of the whole conversation, and every sequence starts with the tokenizer's start token."""
  import json

  from safejax.chat_template import format_chat
  from safejax.vocab import END_OF_TURN, load_vocabulary

  vocab = load_vocabulary(str(bpe_vocab_dir))
  assert vocab.decoder_start_id == 400
  messages = [{"role": "user", "content": "Describe the river."},
              {"role": "assistant", "content": "The river watched the morning light."}]
  path = tmp_path / "sft.jsonl"
  path.write_text(json.dumps({"messages": messages}) + "\n")
  tasks.register_chat_task("test_bpe_chat", str(path), str(bpe_vocab_dir))
  batch = next(T.make_train_iterator("test_bpe_chat", 64, 2, seed=0))
  first = batch["decoder_segment_ids"][0] == 1
  inputs, targets = batch["decoder_input_tokens"][0][first], batch["decoder_target_tokens"][0][first]
  weights = batch["decoder_loss_weights"][0][first]
  assert inputs[0] == 400  # the start token, shifted in by the feature converter
  reply = [t for t, w in zip(targets, weights) if w]
  assert vocab.decode(reply[:-1]) == " The river watched the morning light." + END_OF_TURN
  assert reply[-1] == vocab.eos_id
  prompt = [t for t, w in zip(targets, weights) if not w]
  assert prompt + reply[:-1] == vocab.encode(format_chat(messages, add_generation_prompt=False))


def test_byte_level_text_task_starts_documents_with_the_start_token(tiny_corpus, bpe_vocab_dir):
  tasks.register_text_task("test_bpe_text", str(tiny_corpus), str(bpe_vocab_dir))
  batch = next(T.make_train_iterator("test_bpe_text", 64, 4, seed=0))
  starts = (batch["decoder_positions"] == 0) & (batch["decoder_segment_ids"] > 0)
  assert starts.sum() >= 4 and (batch["decoder_input_tokens"][starts] == 400).all()


def test_init_from_rejects_another_vocabulary(tmp_path, tiny_vocab, tiny_bpe_vocab):
  config = TINY.with_vocab_size(tiny_bpe_vocab.vocab_size)
  checkpoints.write_model_files(str(tmp_path), config, tiny_bpe_vocab)
  with pytest.raises(ValueError, match="was trained with another vocabulary than"):
    T._initial_params(str(tmp_path), config, tiny_vocab, target=None)


def test_read_metrics_leaves_out_a_half_written_last_line(tmp_path):
  (tmp_path / checkpoints.METRICS_FILE).write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
  assert [m["step"] for m in checkpoints.read_metrics(str(tmp_path))] == [1, 2]
  (tmp_path / checkpoints.METRICS_FILE).write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl:2: not a metrics record"):
    checkpoints.read_metrics(str(tmp_path))


# -- issue 23: a damaged checkpoint costs one step, not the run --------------------------------------


def damage(model_dir, step, how):
  """Damages checkpoint `step` as a crash while copying or a full disk would."""
  params = model_dir / "checkpoints" / str(step) / "params"
  if how == "truncated array file":
    arrays = [p for p in params.rglob("*") if p.is_file() and p.parent.name == "d"]
    largest = max(arrays, key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[: largest.stat().st_size // 2])
  else:
    (params / "_METADATA").unlink()


def crash_after(task, model_dir, batches, monkeypatch):
  """Runs the 12-step reference command until it dies reading batch `batches` + 1."""
  real_next, consumed = T.InputIterator.__next__, []

  def crashing_next(self):
    if len(consumed) == batches:
      raise Crash()
    consumed.append(1)
    return real_next(self)

  monkeypatch.setattr(T.InputIterator, "__next__", crashing_next)
  with pytest.raises(Crash):
    run(task, model_dir, 12)
  monkeypatch.setattr(T.InputIterator, "__next__", real_next)


@pytest.mark.parametrize("how", ["truncated array file", "missing metadata"])
def test_a_damaged_newest_checkpoint_costs_one_step_not_the_run(task, reference_run, tmp_path, monkeypatch, caplog,
                                                                how):
  crash_after(task, tmp_path, 9, monkeypatch)  # dies in step 10, after checkpoints 4 and 8
  damage(tmp_path, 8, how)
  with caplog.at_level("WARNING", logger="safejax.checkpoints"):
    run(task, tmp_path, 12)  # the same command again
  named = [r.getMessage() for r in caplog.records if "checkpoint step 8" in r.getMessage()]
  assert len(named) == 1 and "cannot be restored" in named[0] and "\n" not in named[0]
  assert (tmp_path / "damaged_checkpoints" / "8" / "params").is_dir()  # moved aside, not deleted
  assert steps_on_disk(tmp_path) == [4, 8, 12]
  # Resumed from step 4: steps 5..12 replayed exactly, and metrics.jsonl lists each step once.
  logged = [json.loads(line)["step"] for line in (tmp_path / checkpoints.METRICS_FILE).read_text().splitlines()]
  assert logged == list(range(1, 13))
  resumed = {m["step"]: m["loss"] for m in checkpoints.read_metrics(str(tmp_path))}
  reference = {m["step"]: m["loss"] for m in checkpoints.read_metrics(str(reference_run))}
  assert resumed == reference


def test_no_restorable_checkpoint_fails_in_one_line_and_moves_nothing(task, tmp_path, monkeypatch):
  crash_after(task, tmp_path, 9, monkeypatch)
  damage(tmp_path, 8, "missing metadata")
  damage(tmp_path, 4, "truncated array file")
  with pytest.raises(checkpoints.NoUsableCheckpointError) as error:
    run(task, tmp_path, 12)
  message = str(error.value).splitlines()[0]
  assert message.startswith(f"no checkpoint under {tmp_path}/checkpoints restores: step 8: ")
  assert "; step 4: " in message
  assert steps_on_disk(tmp_path) == [4, 8] and not (tmp_path / "damaged_checkpoints").exists()


def test_loading_for_inference_falls_back_without_moving_anything(task, reference_run, tmp_path, caplog):
  import shutil

  shutil.copytree(reference_run, tmp_path / "m")
  damage(tmp_path / "m", 12, "truncated array file")
  with caplog.at_level("WARNING", logger="safejax.checkpoints"):
    model, _ = checkpoints.load_for_inference(str(tmp_path / "m"))
  assert any("checkpoint step 12" in r.getMessage() for r in caplog.records)
  step8, _ = checkpoints.load_for_inference(str(reference_run), step=8)
  np.testing.assert_array_equal(model.embed.embedding[...], step8.embed.embedding[...])
  assert steps_on_disk(tmp_path / "m") == [4, 8, 12]  # a reader leaves the directory as it is


def test_metrics_keep_one_row_per_step_after_a_resume(task, tmp_path, monkeypatch):
  crash_after(task, tmp_path, 6, monkeypatch)  # logged steps 1..6, checkpoint 4
  assert [json.loads(line)["step"] for line in (tmp_path / checkpoints.METRICS_FILE).read_text().splitlines()] == [
      1, 2, 3, 4, 5, 6]
  run(task, tmp_path, 12)
  logged = [json.loads(line)["step"] for line in (tmp_path / checkpoints.METRICS_FILE).read_text().splitlines()]
  assert logged == list(range(1, 13))


def test_a_finished_run_writes_nothing(task, reference_run, monkeypatch):
  """Its model directory may be read-only by now (archived, shared): training it again to the same
  step count is a no-op that touches nothing."""
  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied", str(reference_run))

  monkeypatch.setattr(T, "write_model_files", refuse)
  monkeypatch.setattr(T, "checkpoint_manager", refuse)
  assert run(task, reference_run, 12) == {}


@pytest.mark.parametrize("name, value", [("train_steps", 0), ("batch_size", -1), ("sequence_length", "32"),
                                         ("checkpoint_every", 2.5)])
def test_out_of_range_run_values_are_named(task, tmp_path, name, value):
  with pytest.raises(UserError) as error:
    run(task, tmp_path, 12, **{name: value})
  assert str(error.value).splitlines()[0] == f"train.{name} must be a positive integer, got {value!r}"
  assert not (tmp_path / "checkpoints").exists()  # nothing ran
