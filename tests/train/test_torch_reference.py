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
from train.data.batching import collate_pairs
from train.data.encode import TokenizedPair

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
import torch_reference  # noqa: E402

BOS, EOS, PAD = 256, 257, 258
BUCKET = 16
# float32 library against float64 reference, composite ops.
RTOL, ATOL = 1e-4, 1e-4
# Complements can be tiny (log(1 - pi) ~ -pi): compare them relatively.
COMPLEMENT_ATOL = 1e-9
COMPLEMENTS = ("chosen_not_logps", "rejected_not_logps", "pair_not_logps",
               "chosen_token_pair_not_logps")
# Gradients: float32 library against float64 reference, per leaf; the
# absolute tolerance is relative to the leaf's largest entry.
GRAD_RTOL, GRAD_ATOL = 1e-4, 2e-5
DIFFERENTIABLE = ("chosen_logps", "rejected_logps", "chosen_not_logps",
                  "rejected_not_logps", "pair_not_logps",
                  "chosen_token_logps", "chosen_token_pair_not_logps")


def _config(**changes):
  return models.get_config("llama", "tiny", vocab_size=259, dtype="float32",
                           **changes)


def _random_params(config, seed=0):
  """Random float32 params; a sharp head so some responses are likely.

  Drawn directly (not by ``init``, which compiles): norm scales around one,
  other weights far from their initial scale, so nothing is symmetric.
  """
  rng = np.random.default_rng(seed)
  abstract = models.build(config).abstract_params()
  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
  leaves = []
  for path, leaf in flat:
    name = "/".join(k.key for k in path)
    if name.endswith("scale"):
      value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
    else:
      sharp = "lm_head" in name or "embed" in name
      value = (0.6 if sharp else 0.15) * rng.normal(size=leaf.shape)
    leaves.append(jnp.asarray(value, jnp.float32))
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _likely_pair_start(model):
  """A prompt and a 2-token response of high probability (0.95 here).

  Of 64 candidate prompts, the one whose greedy continuation (special ids
  skipped) is the most likely.
  """
  ids = torch.tensor([[BOS, 10 + k, 11] for k in range(64)])
  logp = torch.zeros(len(ids), dtype=torch.float64)
  with torch.no_grad():
    for _ in range(2):
      log_probs = torch.log_softmax(model(input_ids=ids).logits[:, -1], -1)
      best, token = torch.max(log_probs[:, :BOS], -1)
      logp += best
      ids = torch.cat([ids, token[:, None]], 1)
  row = ids[int(torch.argmax(logp))].tolist()
  return row[:3], row[3:]


def _batch(model):
  """Pairs of varied lengths and shapes of their prefix tree.

  The identical and the prefix pairs are likely ones, so that treating them
  as two sequences would change ``pair_not_logps`` measurably.
  """
  p0, likely = _likely_pair_start(model)
  p1, p2 = [BOS, 5], [BOS, 7, 8, 9, 10, 11]
  other = (likely[1] + 1) % BOS
  pairs = [
      # A likely chosen response; the rejected one leaves it at step 2.
      (p0, likely, [likely[0], other, EOS]),
      # Different first tokens, then the same token at the same step; the
      # rejected response ends early.
      (p1, [40, 41, 42, 43, 44, 45, EOS], [50, 41, EOS]),
      # Identical responses.
      (p0, likely, likely),
      # A likely rejected response, a short chosen one.
      (p0, [70, EOS], likely),
      # A truncated chosen response, prefix of the rejected one.
      (p0, likely[:1], likely),
      # A long prompt.
      (p2, [60, 61, EOS], [62, EOS]),
  ]
  entries = [(TokenizedPair(i, *(np.asarray(x, np.int32) for x in pair)), 1.)
             for i, pair in enumerate(pairs)]
  return collate_pairs(entries, buckets=(BUCKET,), pad_id=PAD)


def _library_statistics(config, params, batch):
  """The statistics from the library's float32 functions."""
  model = models.build(config)
  out, logits = {}, {}
  for side in ("chosen", "rejected"):
    logits[side] = model.apply(params, batch[f"{side}_input_ids"],
                               batch[f"{side}_attention_mask"])
    where = batch[f"{side}_loss_mask"]
    logp, not_logp = slpo_jax.sequence_logps(
        logits[side], batch[f"{side}_labels"], where=where)
    out[f"{side}_logps"], out[f"{side}_not_logps"] = logp, not_logp
    out[f"{side}_lengths"] = jnp.sum(where, -1).astype(jnp.float32)
  out["pair_not_logps"] = slpo_jax.pair_not_logps(
      logits["chosen"], batch["chosen_labels"], logits["rejected"],
      batch["rejected_labels"], chosen_where=batch["chosen_loss_mask"],
      rejected_where=batch["rejected_loss_mask"])
  # An id outside the vocabulary matches no logit: nothing else excluded.
  exclude = jnp.where(batch["rejected_loss_mask"], batch["rejected_labels"],
                      -1)
  tokens = slpo_jax.token_logps(logits["chosen"], batch["chosen_labels"],
                                also_exclude=exclude)
  where = batch["chosen_loss_mask"]
  out["chosen_token_logps"] = jnp.where(where, tokens.logp, 0.0)
  out["chosen_token_pair_not_logps"] = jnp.where(where, tokens.not_logp, 0.0)
  out["chosen_where"] = jnp.asarray(where)
  return out


def _cotangents(batch, seed=1):
  rng = np.random.default_rng(seed)
  rows, length = batch["chosen_input_ids"].shape
  return {key: rng.normal(size=(rows, length) if "token" in key else (rows,))
          for key in DIFFERENTIABLE}


@pytest.fixture(scope="module")
def setup():
  """The model in both frameworks, a batch, cotangents, library results."""
  config = _config()
  params = _random_params(config)
  model = torch_reference.torch_model(config, params)
  batch = _batch(model)
  cotangents = _cotangents(batch)

  def objective(params):
    out = _library_statistics(config, params, batch)
    return sum(jnp.sum(out[k] * cotangents[k]) for k in cotangents), out

  grads, statistics = jax.jit(jax.grad(objective, has_aux=True))(params)
  return dict(config=config, params=params, model=model, batch=batch,
              cotangents=cotangents, statistics=statistics, grads=grads)


def test_out_of_range_id_excludes_nothing():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 7)))
  labels = jnp.asarray([1, 4, 6])
  plain = slpo_jax.token_logps(logits, labels)
  outside = slpo_jax.token_logps(logits, labels,
                                 also_exclude=jnp.full(3, -1))
  np.testing.assert_allclose(outside.not_logp, plain.not_logp, rtol=1e-6)


def test_torch_model_is_float64(setup):
  model = setup["model"]
  assert not model.training
  assert all(p.dtype == torch.float64 and p.requires_grad
             for p in model.parameters())


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
    if key == "chosen_where":
      assert value.dtype == torch.bool
      np.testing.assert_array_equal(value.numpy(), want)
      continue
    assert value.dtype == torch.float64, key
    atol = COMPLEMENT_ATOL if key in COMPLEMENTS else ATOL
    np.testing.assert_allclose(value.detach().numpy(), want, rtol=RTOL,
                               atol=atol, err_msg=key)


def test_gradients_match_jax(setup):
  model, config = setup["model"], setup["config"]
  outputs = torch_reference.pair_statistics(model, setup["batch"])
  got = torch_reference.gradients(model, outputs, setup["cotangents"], config)
  want = setup["grads"]
  assert (jax.tree_util.tree_structure(got)
          == jax.tree_util.tree_structure(want))
  flat = jax.tree_util.tree_flatten_with_path(want)[0]
  for (path, leaf), mine in zip(flat, jax.tree.leaves(got)):
    leaf = np.asarray(leaf)
    assert mine.dtype == np.float64 and mine.shape == leaf.shape, path
    scale = np.max(np.abs(leaf))
    assert scale > 0, path
    np.testing.assert_allclose(mine, leaf, rtol=GRAD_RTOL,
                               atol=GRAD_ATOL * scale,
                               err_msg=jax.tree_util.keystr(path))


def test_missing_cotangents_count_as_zero(setup):
  model, config = setup["model"], setup["config"]
  cotangents = setup["cotangents"]
  outputs = torch_reference.pair_statistics(model, setup["batch"])
  some = {k: cotangents[k] for k in ("chosen_logps", "pair_not_logps")}
  zeros = {k: (v if k in some else np.zeros_like(v))
           for k, v in cotangents.items()}
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
      model, torch_reference.pair_statistics(model, batch), cotangents,
      config)
  blocks = [f"layers_{i}" for i in range(config.num_layers)]
  scanned_params = {k: v for k, v in params.items() if k not in blocks}
  scanned_params["layers"] = jax.tree.map(
      lambda *x: jnp.stack(x), *(params[b] for b in blocks))
  got = _reference_gradients(config.replace(scan_layers=True),
                             scanned_params, batch, cotangents)
  want = {k: v for k, v in unscanned.items() if k not in blocks}
  want["layers"] = jax.tree.map(lambda *x: np.stack(x),
                                *(unscanned[b] for b in blocks))
  assert (jax.tree_util.tree_structure(got)
          == jax.tree_util.tree_structure(want))
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
      want["embed"]["embedding"] + want["lm_head"].T, rtol=1e-10,
      atol=1e-12 * np.max(np.abs(want["lm_head"])))
  np.testing.assert_allclose(got["final_norm"]["scale"],
                             want["final_norm"]["scale"], rtol=1e-10)
