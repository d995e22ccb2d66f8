"""The policy as a Hugging Face folder: at the end of training, and from any
checkpoint of a workdir (``python -m train.export``).

The folder is read back by ``transformers`` (PyTorch, CPU, float32) and
compared with the JAX model that was trained.
"""

import json
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from slpo_jax import models
from train import data as data_lib
from train import export
from train.data import chat
from train.errors import ConfigError
from train.errors import NoCheckpointError

from train_testing import assert_trees_equal
from train_testing import host_copy
from train_testing import load_checkpoint_params
from train_testing import make_tiny_config

TOLERANCE = 1e-4
MESSAGES = [{"role": "user", "content": "ab cd"}]


def _loaded(folder):
  """The parameters of an exported folder, as the library reads them."""
  return host_copy(models.load_hf_model(folder)[1])


def _safetensors_dtypes(path) -> set[str]:
  # The header: 8 bytes of little-endian length, then JSON.
  with open(path, "rb") as file:
    (length,) = struct.unpack("<Q", file.read(8))
    header = json.loads(file.read(length))
  return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_the_end_of_training_export_is_the_model_in_transformers(chat_run):
  workdir = chat_run.trained.workdir
  folder = (workdir / "hf").absolute()
  assert f"Hugging Face folder: {folder}" in chat_run.output
  assert sorted(p.name for p in folder.iterdir()) == [
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
  ]
  run = chat_run.trained.run
  params = chat_run.trained.result.state.params
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(
    folder, dtype=torch.float32
  ).eval()

  ids = np.random.default_rng(0).integers(
    0, run.spec.model.config.vocab_size, (2, 12)
  )
  ours = jax.jit(run.spec.model.apply)(params, jnp.asarray(ids, jnp.int32))
  with torch.no_grad():
    theirs = hf_model(torch.tensor(ids)).logits.numpy()
  assert np.max(np.abs(np.asarray(ours) - theirs)) <= TOLERANCE

  # Greedy generation stops where ours does: the ChatML end of turn is
  # among generation_config.json's EOS ids.
  tokenizer = data_lib.load_tokenizer(str(chat_run.tokenizer_folder))
  template = chat.load_chat_template(run.config.data, tokenizer=tokenizer)
  end_of_turn = tokenizer.encode("<|im_end|>")
  assert json.loads((folder / "generation_config.json").read_text()) == {
    "bos_token_id": tokenizer.bos_id,
    "eos_token_id": [tokenizer.eos_id, *end_of_turn],
    "pad_token_id": tokenizer.pad_id,
  }
  prompt = tokenizer.encode(
    template.render(MESSAGES, add_generation_prompt=True)
  )
  # Two rows, as train.sample's tests draw: one compiled loop for both.
  out = models.generate(
    run.spec.model,
    params,
    jnp.asarray([prompt, prompt]),
    jnp.ones((2, len(prompt)), jnp.int32),
    rng=jax.random.key(0),
    max_new_tokens=10,
    temperature=0.0,
    eos_id=export.stop_ids(tokenizer, template),
    pad_id=tokenizer.pad_id,
  )
  with torch.no_grad():
    generated = hf_model.generate(
      torch.tensor([prompt]),
      attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
      max_new_tokens=10,
      do_sample=False,
    )
  length = int(out.lengths[0])
  assert generated[0, len(prompt) :].tolist() == out.tokens[0, :length].tolist()

  # The tokenizer files reload in transformers, with the run's template.
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  text = "ab cd efg hij"
  assert hf_tokenizer.encode(text, add_special_tokens=False) == (
    tokenizer.encode(text)
  )
  assert hf_tokenizer.apply_chat_template(
    MESSAGES, add_generation_prompt=True, tokenize=False
  ) == template.render(MESSAGES, add_generation_prompt=True)
  tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
  assert tokenizer_config["chat_template"] == chat.BUILTIN_TEMPLATES["chatml"]
  assert tokenizer_config["eos_token"] == "</s>"  # The source's, kept.


def test_an_earlier_checkpoint_exports_its_own_parameters(chat_run, tmp_path):
  workdir = chat_run.trained.workdir
  out = export.export_checkpoint(workdir, tmp_path / "step1", step=1)
  assert_trees_equal(_loaded(out), load_checkpoint_params(workdir, 1))
  assert_trees_equal(
    _loaded(workdir / "hf"), load_checkpoint_params(workdir, 2)
  )
  # Only the folder itself: the temporary one it was written as is gone.
  assert [p.name for p in tmp_path.iterdir()] == ["step1"]


def test_a_bfloat16_export_holds_bfloat16_weights(chat_run, tmp_path):
  workdir = chat_run.trained.workdir
  out = export.export_checkpoint(workdir, tmp_path / "bf16", dtype="bfloat16")
  assert _safetensors_dtypes(out / "model.safetensors") == {"BF16"}
  assert json.loads((out / "config.json").read_text())["torch_dtype"] == (
    "bfloat16"
  )
  rounded = jax.tree.map(
    lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32),
    load_checkpoint_params(workdir, 2),
  )
  assert_trees_equal(_loaded(out), rounded)


def test_a_built_in_tokenizer_exports_weights_and_config(
  pair_files, tmp_path, capsys
):
  config = make_tiny_config(pair_files)  # The byte tokenizer.
  model = models.build(models.get_config("llama", "tiny", vocab_size=259))
  rng = np.random.default_rng(0)
  params = jax.tree.map(
    lambda x: rng.normal(size=x.shape).astype(np.float32),
    model.abstract_params(),
  )
  for _ in range(2):  # The second replaces the first.
    out = export.export_policy(
      config, model, params, tmp_path / "hf", max_shard_size=200_000
    )
  names = sorted(p.name for p in out.iterdir())
  assert "model.safetensors.index.json" in names
  assert len([n for n in names if n.startswith("model-0")]) > 1
  assert not set(names) & set(export.TOKENIZER_FILES)
  assert [p.name for p in tmp_path.iterdir()] == ["hf"]
  assert_trees_equal(_loaded(out), host_copy(params))
  hf_config = json.loads((out / "config.json").read_text())
  assert [hf_config[f"{k}_token_id"] for k in ("bos", "eos", "pad")] == [
    256,
    257,
    258,
  ]
  lines = capsys.readouterr().out.splitlines()
  assert (
    lines
    == [
      f"{out}: no tokenizer files written: the run's tokenizer (ByteTokenizer)"
      " is built in and has none"
    ]
    * 2
  )


@pytest.mark.parametrize(
  ("changes", "error", "message"),
  [
    ({"workdir": "empty"}, NoCheckpointError, "no checkpoint in"),
    ({"step": 7}, NoCheckpointError, "no checkpoint of step 7 .* are 1, 2$"),
    ({"out": "full"}, ConfigError, "full is not empty"),
    ({"dtype": "float16"}, ConfigError, "--dtype is 'float16'"),
    ({"format_name": "peft"}, ConfigError, "peft needs a LoRA run"),
    ({"format_name": "merged"}, ConfigError, "merged needs a LoRA run"),
  ],
)
def test_export_mistakes_are_one_line_errors(
  chat_run, tmp_path, changes, error, message
):
  (tmp_path / "empty").mkdir()
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "notes.txt").write_text("mine")
  arguments = {"workdir": chat_run.trained.workdir, "out": "new"}
  arguments.update(changes)
  for key in ("workdir", "out"):
    arguments[key] = tmp_path / arguments[key]
  with pytest.raises(error, match=message):
    export.export_checkpoint(arguments.pop("workdir"), **arguments)
  assert not (tmp_path / "new").exists()
  assert (tmp_path / "full" / "notes.txt").read_text() == "mine"


def test_the_command_line(command_lines):
  done = command_lines["export_peft"]
  assert done.returncode == 2
  # (Whether a run is LoRA is in its checkpoint, which this workdir lacks.)
  assert len(done.stderr.splitlines()) == 1
  assert done.stderr.startswith("error: no checkpoint in ")
  done = command_lines["export_help"]
  assert done.returncode == 0, done.stderr
  for flag in ("--workdir", "--step", "--out", "--dtype", "--format"):
    assert f"  {flag}: " in done.stdout
