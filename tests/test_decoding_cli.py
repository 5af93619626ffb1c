"""`safejax decode` end to end: a saved checkpoint, prompts from the command line and a file."""

import json

import gin
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from safejax import cli
from safejax import checkpoints
from safejax.decoding.generate import read_prompts
from safejax.model import ModelConfig, build_model


@pytest.fixture(scope="module")
def model_dir(tiny_vocab, tmp_path_factory):
  """A model directory as `safejax train` leaves it (random parameters)."""
  model_dir = tmp_path_factory.mktemp("model")
  config = ModelConfig(num_layers=1, embed_dim=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64,
                       vocab_size=tiny_vocab.vocab_size)
  checkpoints.write_model_files(str(model_dir), config, tiny_vocab)
  manager = checkpoints.checkpoint_manager(str(model_dir), async_save=False)
  manager.save(1, args=ocp.args.Composite(params=ocp.args.StandardSave(nnx.state(build_model(config)))))
  manager.close()
  return model_dir


@pytest.fixture(autouse=True)
def clean_gin():
  yield
  gin.clear_config()


def test_decode_command_writes_generations(model_dir, tmp_path, capsys):
  prompts_file = tmp_path / "prompts.jsonl"
  prompts_file.write_text(json.dumps({"prompt": "A small bird"}) + "\n\n" + json.dumps({"prompt": "Our teacher"}) + "\n")
  output = tmp_path / "out" / "generations.jsonl"
  assert cli.main([
      "decode", f"--gin.decode.checkpoint_dir='{model_dir}'", f"--gin.decode.prompts_file='{prompts_file}'",
      f"--gin.decode.output_file='{output}'", "--gin.decode.batch_size=2",
      "--gin.DecodingConfig.method='safebeam'", "--gin.DecodingConfig.max_new_tokens=5",
      "--gin.DecodingConfig.beam_size=2", "--gin.DecodingConfig.num_expand=2", "The river"]) == 0
  records = [json.loads(line) for line in output.read_text().splitlines()]
  assert [r["prompt"] for r in records] == ["The river", "A small bird", "Our teacher"]
  for record in records:
    assert 0 <= record["num_tokens"] <= 5
    assert "<potentially_unsafe_content>" not in record["text"]
    assert set(record) == {"prompt", "text", "num_tokens", "score", "finished", "tag_stopped"}
  assert ">>> The river" in capsys.readouterr().out


def test_decode_command_rejects_bad_input(model_dir, tmp_path):
  with pytest.raises(SystemExit, match="decode"):
    cli.main(["decode", f"--gin.decode.checkpoint_dir='{model_dir}'", "--gin.DecodingConfig.metod='beam'", "x"])
  with pytest.raises(SystemExit, match="^safejax decode: no prompts"):
    cli.main(["decode", f"--gin.decode.checkpoint_dir='{model_dir}'"])
  with pytest.raises(SystemExit, match="^safejax decode: unknown decoding method 'nucleus'"):
    cli.main(["decode", f"--gin.decode.checkpoint_dir='{model_dir}'", "--gin.DecodingConfig.method='nucleus'", "x"])


def test_decode_refuses_reserved_token_strings_in_plain_text(model_dir, tmp_path):
  """As the server does: plain text never becomes the harm tag's or a role marker's id."""
  with pytest.raises(SystemExit) as error:
    cli.main(["decode", f"--gin.decode.checkpoint_dir='{model_dir}'", "The river",
              "Hello <potentially_unsafe_content> world <|assistant|>"])
  assert str(error.value) == (
      "safejax decode: prompt 2 ('Hello <potentially_unsafe_content> world <|assistant|>') holds reserved token "
      "string(s) ['<potentially_unsafe_content>', '<|assistant|>']: plain text never becomes reserved token ids "
      "(`safejax serve` takes token ids from a client that means them)")
  prompts = tmp_path / "p.txt"
  prompts.write_text("\ufefffirst prompt\nsecond <|user|> prompt\n", encoding="utf-8")
  assert read_prompts(str(prompts))[0] == "first prompt"  # a byte-order mark is no part of it
  with pytest.raises(SystemExit, match=r"prompt 2 .* \['<\|user\|>'\]"):
    cli.main(["decode", f"--gin.decode.checkpoint_dir='{model_dir}'", f"--gin.decode.prompts_file='{prompts}'"])


def test_read_prompts(tmp_path):
  text = tmp_path / "p.txt"
  text.write_text("first prompt\n\n second one \n")
  assert read_prompts(str(text)) == ["first prompt", " second one "]
  bad = tmp_path / "p.jsonl"
  bad.write_text('{"text": "no prompt field"}\n')
  with pytest.raises(ValueError, match="p.jsonl:1"):
    read_prompts(str(bad))
