"""The SFT reference fit stops on a signal with its progress saved, and a
second call continues to the same parameters as an uninterrupted fit."""

import os
import signal

import jax
import pytest

from train import data as data_lib
from train import setup as setup_lib
from train import sft
from train import stopping

from train_testing import assert_trees_equal
from train_testing import make_tiny_config

STEPS = 6


def _fit_pieces():
  config = make_tiny_config()  # The synthetic task, whose reference is fitted.
  tokenizer = data_lib.make_tokenizer(config.data)
  model = setup_lib.abstract_model(config, tokenizer.vocab_size)
  params = jax.device_get(model.init(jax.random.key(0)))

  def batches():
    return data_lib.make_sft_pipeline(
      config.data, batch_size=8, seed=0, shard_index=0, shard_count=1
    )

  return model, params, batches


def _signalling(batches, at: int, signum):
  """The batches, sending ``signum`` to this process with batch ``at``."""
  for index, batch in enumerate(batches, start=1):
    if index == at:
      os.kill(os.getpid(), signum)
    yield batch


@pytest.mark.parametrize(
  "signum",
  [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
)
def test_a_signal_saves_the_fit_and_a_rerun_continues_it(
  tmp_path, signum, monkeypatch
):
  model, params, batches = _fit_pieces()
  options = dict(steps=STEPS, learning_rate=3e-3, show_progress=False)
  whole, _ = sft.fit(model, params, batches(), **options)

  progress_file = tmp_path / "reference.partial.npz"
  with pytest.raises(stopping.Stopped) as stopped:
    sft.fit(
      model,
      params,
      _signalling(batches(), at=3, signum=signum),
      progress_file=progress_file,
      **options,
    )
  assert stopped.value.signal_name == signum.name
  assert stopped.value.exit_code == {"SIGTERM": 0, "SIGINT": 130}[signum.name]
  assert "step 3 of 6 saved" in str(stopped.value)
  assert progress_file.exists()

  # The rerun takes only the steps left, from the saved state.
  steps_taken = []
  step = sft._sft_step
  monkeypatch.setattr(
    sft, "_sft_step", lambda *a, **k: steps_taken.append(1) or step(*a, **k)
  )
  resumed, _ = sft.fit(
    model, params, batches(), progress_file=progress_file, **options
  )
  assert len(steps_taken) == STEPS - 3
  assert_trees_equal(jax.device_get(resumed), jax.device_get(whole))
