"""The float64 PyTorch reference agrees with the library's pure functions.

`torch_reference` recomputes, in float64 with `transformers`, the statistics
the training program feeds to its losses. These tests show it is right: on
the same random tiny Llama and a batch laid out by `collate_pairs`, every
statistic and its gradient w.r.t. our parameters match the float32 library
(`slpo_jax.sequence_logps`, `pair_not_logps`, `token_logps` and `jax.grad`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slpo_jax
from slpo_jax import models

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
import torch_reference  # noqa: E402

# float32 library against float64 reference, composite ops.
RTOL, ATOL = 1e-4, 1e-4
# Complements can be tiny (log(1 - pi) ~ -pi): compare them relatively.
COMPLEMENT_ATOL = 1e-9
COMPLEMENTS = (
  "chosen_not_logps",
  "rejected_not_logps",
  "pair_not_logps",
  "chosen_token_pair_not_logps",
)
# Gradients: float32 library against float64 reference, per leaf; the
# absolute tolerance is relative to the leaf's largest entry.
GRAD_RTOL, GRAD_ATOL = 1e-4, 2e-5
DIFFERENTIABLE = torch_reference.DIFFERENTIABLE


def _library_statistics(config, params, batch):
  """The statistics from the library's float32 functions."""
  model = models.build(config)
  out, logits = {}, {}
  for side in ("chosen", "rejected"):
    logits[side] = model.apply(
      params, batch[f"{side}_input_ids"], batch[f"{side}_attention_mask"]
    )
    where = batch[f"{side}_loss_mask"]
    logp, not_logp = slpo_jax.sequence_logps(
      logits[side], batch[f"{side}_labels"], where=where
    )
    out[f"{side}_logps"], out[f"{side}_not_logps"] = logp, not_logp
    out[f"{side}_lengths"] = jnp.sum(where, -1).astype(jnp.float32)
    out[f"{side}_mean_logits"] = jnp.sum(
      jnp.where(where, jnp.mean(logits[side], -1), 0.0), -1
    ) / jnp.maximum(jnp.sum(where, -1), 1)
  top1 = jnp.argmax(logits["chosen"], -1) == batch["chosen_labels"]
  out["chosen_top1_tokens"] = jnp.sum(
    top1 & batch["chosen_loss_mask"], -1
  ).astype(jnp.float32)
  out["pair_not_logps"] = slpo_jax.pair_not_logps(
    logits["chosen"],
    batch["chosen_labels"],
    logits["rejected"],
    batch["rejected_labels"],
    chosen_where=batch["chosen_loss_mask"],
    rejected_where=batch["rejected_loss_mask"],
  )
  # An id outside the vocabulary matches no logit: nothing else excluded.
  exclude = jnp.where(batch["rejected_loss_mask"], batch["rejected_labels"], -1)
  tokens = slpo_jax.token_logps(
    logits["chosen"], batch["chosen_labels"], also_exclude=exclude
  )
  where = batch["chosen_loss_mask"]
  out["chosen_token_logps"] = jnp.where(where, tokens.logp, 0.0)
  out["chosen_token_pair_not_logps"] = jnp.where(where, tokens.not_logp, 0.0)
  out["chosen_where"] = jnp.asarray(where)
  out["counted"] = jnp.any(where, -1) & (batch["example_weight"] > 0)
  return out


def _cotangents(batch, seed=1):
  rng = np.random.default_rng(seed)
  rows, length = batch["chosen_input_ids"].shape
  return {
    key: rng.normal(size=(rows, length) if "token" in key else (rows,))
    for key in DIFFERENTIABLE
  }


@pytest.fixture(scope="module")
def setup():
  """The model in both frameworks, a batch, cotangents, library results."""
  config = torch_reference.tiny_config()
  params = torch_reference.random_params(config)
  model = torch_reference.torch_model(config, params)
  batch = torch_reference.pairs_batch(model)
  cotangents = _cotangents(batch)

  def objective(params):
    out = _library_statistics(config, params, batch)
    return sum(jnp.sum(out[k] * cotangents[k]) for k in cotangents), out

  grads, statistics = jax.jit(jax.grad(objective, has_aux=True))(params)
  return dict(
    config=config,
    params=params,
    model=model,
    batch=batch,
    cotangents=cotangents,
    statistics=statistics,
    grads=grads,
  )


def test_out_of_range_id_excludes_nothing():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 7)))
  labels = jnp.asarray([1, 4, 6])
  plain = slpo_jax.token_logps(logits, labels)
  outside = slpo_jax.token_logps(logits, labels, also_exclude=jnp.full(3, -1))
  np.testing.assert_allclose(outside.not_logp, plain.not_logp, rtol=1e-6)


def test_torch_model_is_float64(setup):
  model = setup["model"]
  assert not model.training
  assert all(
    p.dtype == torch.float64 and p.requires_grad for p in model.parameters()
  )


def test_statistics_match_library(setup):
  expected = setup["statistics"]
  got = torch_reference.pair_statistics(setup["model"], setup["batch"])
  assert set(got) == set(expected)
  # The batch covers both forms of the library's complements.
  for key in ("chosen_logps", "rejected_logps"):
    assert np.max(np.asarray(expected[key])) > np.log(0.5), key
    assert np.min(np.asarray(expected[key])) < np.log(0.5), key
  for key, value in got.items():
    want = np.asarray(expected[key])
    assert value.shape == want.shape, key
    if key in ("chosen_where", "counted"):
      assert value.dtype == torch.bool
      np.testing.assert_array_equal(value.numpy(), want)
      continue
    assert value.dtype == torch.float64, key
    atol = COMPLEMENT_ATOL if key in COMPLEMENTS else ATOL
    np.testing.assert_allclose(
      value.detach().numpy(), want, rtol=RTOL, atol=atol, err_msg=key
    )


def test_gradients_match_jax(setup):
  model, config = setup["model"], setup["config"]
  outputs = torch_reference.pair_statistics(model, setup["batch"])
  got = torch_reference.gradients(model, outputs, setup["cotangents"], config)
  want = setup["grads"]
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  flat = jax.tree_util.tree_flatten_with_path(want)[0]
  for (path, leaf), mine in zip(flat, jax.tree.leaves(got)):
    leaf = np.asarray(leaf)
    assert mine.dtype == np.float64 and mine.shape == leaf.shape, path
    scale = np.max(np.abs(leaf))
    assert scale > 0, path
    np.testing.assert_allclose(
      mine,
      leaf,
      rtol=GRAD_RTOL,
      atol=GRAD_ATOL * scale,
      err_msg=jax.tree_util.keystr(path),
    )


def test_missing_cotangents_count_as_zero(setup):
  model, config = setup["model"], setup["config"]
  cotangents = setup["cotangents"]
  outputs = torch_reference.pair_statistics(model, setup["batch"])
  some = {k: cotangents[k] for k in ("chosen_logps", "pair_not_logps")}
  zeros = {
    k: (v if k in some else np.zeros_like(v)) for k, v in cotangents.items()
  }
  got = torch_reference.gradients(model, outputs, some, config)
  want = torch_reference.gradients(model, outputs, zeros, config)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert any(np.any(x != 0) for x in jax.tree.leaves(got))


def _reference_gradients(config, params, batch, cotangents):
  model = torch_reference.torch_model(config, params)
  outputs = torch_reference.pair_statistics(model, batch)
  return torch_reference.gradients(model, outputs, cotangents, config)


def test_scanned_layers_gradients(setup):
  config, params = setup["config"], setup["params"]
  batch, cotangents = setup["batch"], setup["cotangents"]
  model = setup["model"]
  unscanned = torch_reference.gradients(
    model, torch_reference.pair_statistics(model, batch), cotangents, config
  )
  blocks = [f"layers_{i}" for i in range(config.num_layers)]
  scanned_params = {k: v for k, v in params.items() if k not in blocks}
  scanned_params["layers"] = jax.tree.map(
    lambda *x: jnp.stack(x), *(params[b] for b in blocks)
  )
  got = _reference_gradients(
    config.replace(scan_layers=True), scanned_params, batch, cotangents
  )
  want = {k: v for k, v in unscanned.items() if k not in blocks}
  want["layers"] = jax.tree.map(
    lambda *x: np.stack(x), *(unscanned[b] for b in blocks)
  )
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_tied_embeddings_gradients(setup):
  """A tied model's embedding gradient sums those of its two uses."""
  config, params = setup["config"], setup["params"]
  batch, cotangents = setup["batch"], setup["cotangents"]
  untied = dict(params, lm_head=params["embed"]["embedding"].T)
  tied = {k: v for k, v in params.items() if k != "lm_head"}
  tied_config = config.replace(tie_embeddings=True)
  got = _reference_gradients(tied_config, tied, batch, cotangents)
  want = _reference_gradients(config, untied, batch, cotangents)
  assert "lm_head" not in got
  np.testing.assert_allclose(
    got["embed"]["embedding"],
    want["embed"]["embedding"] + want["lm_head"].T,
    rtol=1e-10,
    atol=1e-12 * np.max(np.abs(want["lm_head"])),
  )
  np.testing.assert_allclose(
    got["final_norm"]["scale"], want["final_norm"]["scale"], rtol=1e-10
  )
