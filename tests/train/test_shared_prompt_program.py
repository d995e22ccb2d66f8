"""``data.share_prompt`` through the whole program: the same losses as
paired packed rows, on the mesh, with LoRA and the cached reference, resumed
exactly; its config errors, preview, load report and ``train.aot``."""

import jax
import numpy as np
import pytest

from train import aot
from train import validate
from train.data import preview
from train.errors import ConfigError

from train_testing import read_metrics
from train_testing import train
from train_testing import train_losses

_SHARED = {"data.packing": True, "data.share_prompt": True}
_PACKED = {"data.packing": True, "data.packed_length": 64}


def _without_timing(record: dict) -> dict:
  return {k: v for k, v in record.items() if k != "tokens_per_second"}


@pytest.mark.parametrize(
  "changes",
  [
    pytest.param({"reference.mode": "online"}, marks=pytest.mark.slow),
    pytest.param({"reference.mode": "precomputed"}, marks=pytest.mark.slow),
    pytest.param({"model.lora.rank": 4}, marks=pytest.mark.slow),
  ],
  ids=["online", "precomputed", "lora"],
)
def test_training_matches_paired_packed_rows(make_config, tmp_path, changes):
  """The same pairs in the same order, so the same losses and evaluation;
  the shared-prompt run splits its rows over two devices."""
  runs = {}
  for name, layout, devices in (("packed", _PACKED, 1), ("shared", _SHARED, 2)):
    config = make_config(**layout, **changes, eval_every=2)
    workdir = tmp_path / name
    runs[name] = (train(config, workdir, devices=devices), workdir)
  (packed, packed_dir), (shared, shared_dir) = runs["packed"], runs["shared"]
  assert int(shared.result.state.step) == 4
  np.testing.assert_allclose(
    list(train_losses(shared_dir).values()),
    list(train_losses(packed_dir).values()),
    rtol=1e-4,
  )
  np.testing.assert_allclose(
    shared.result.eval_metrics["eval/loss"],
    packed.result.eval_metrics["eval/loss"],
    rtol=1e-4,
  )
  records = {name: read_metrics(d) for name, (_, d) in runs.items()}
  for got, want in zip(records["shared"], records["packed"]):
    # Tokens counted as paired rows hold them, whatever the layout.
    if "tokens" in want:
      assert got["tokens"] == want["tokens"]


@pytest.mark.slow
def test_a_resumed_run_continues_exactly(make_config, tmp_path):
  changes = {**_SHARED, "checkpoint_every": 1}
  straight = train(make_config(**changes), tmp_path / "straight")
  assert int(straight.result.state.step) == 4
  train(make_config(**changes, steps=2), tmp_path / "resumed")
  train(make_config(**changes), tmp_path / "resumed")
  got = read_metrics(tmp_path / "resumed")
  want = read_metrics(tmp_path / "straight")
  assert [r["step"] for r in got] == [1, 2, 3, 4]
  for actual, wanted in zip(got, want):
    actual, wanted = _without_timing(actual), _without_timing(wanted)
    for name in wanted:
      np.testing.assert_allclose(
        actual[name], wanted[name], rtol=1e-6, atol=1e-6, err_msg=name
      )


@pytest.mark.parametrize(
  ("changes", "message"),
  [
    ({"data.share_prompt": True}, "share_prompt needs packing=True"),
    (
      {**_SHARED, "data.packed_length": 40},
      r"packed_length \(40\) is smaller than 2 x max_length - 1 \(63\)",
    ),
    (
      {**_SHARED, "model.attention_impl": "splash"},
      "attention_impl=splash cannot mask shared-prompt rows",
    ),
    ({**_SHARED, "grad_accum_steps": 2}, "data.packing needs grad_accum"),
  ],
)
def test_config_errors(make_config, changes, message):
  config = make_config(**changes)
  with pytest.raises(Exception, match=message) as error:
    validate.validate(config, jax.devices()[:1])
    # Data settings are checked when the data is loaded.
    preview.preview(config, num=1, output_format="json")
  assert "\n" not in str(error.value)


def test_preview_shows_the_layout_and_the_saving(make_config, capsys):
  config = make_config(**_SHARED)
  preview.preview(config, num=1, output_format="text")
  out = capsys.readouterr().out
  assert "shared-prompt segment: prompt, chosen, rejected in" in out
  assert "fewer positions than paired rows" in out


def test_aot_compiles_the_layout(make_config):
  config = make_config(**_SHARED)
  validate.validate(config, jax.devices()[:2])
  layout = aot.PackedLayout(rows=2, slots=4)
  compiled, _ = aot.compile_step(config, jax.devices()[:2], layout)
  assert compiled.memory_analysis().temp_size_in_bytes > 0
  with pytest.raises(ConfigError):
    validate.validate(
      make_config(**_SHARED, **{"model.attention_impl": "cudnn"}),
      jax.devices()[:1],
    )


def test_attention_tile_reaches_the_model(make_config):
  from train import setup

  config = make_config(**{"model.attention_block": 128})
  validate.validate(config, jax.devices()[:1])
  assert setup.abstract_model(config, 512).config.attention_block == 128
  assert setup.abstract_model(make_config(), 512).config.attention_block == 512
  with pytest.raises(ConfigError, match="attention_block is -1"):
    validate.validate(
      make_config(**{"model.attention_block": -1}), jax.devices()[:1]
    )
