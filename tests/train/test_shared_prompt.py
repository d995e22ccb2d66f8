"""Shared-prompt rows (``data.share_prompt``) give the paired layout's
statistics, losses and train step, pair by pair."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_packed_step import sgd_step

import slpo_jax
from slpo_jax import models
from tests.models import models_testing
from train import batch as batch_lib
from train import objective
from train.data import batching
from train.data import encode
from train.data import shared_rows

_LENGTH = 48
_VOCAB = 500


def _pairs(count=8, seed=0):
  """Random pairs with the cases the layout must get right: responses that
  agree beyond the prompt, one-token responses, truncated prompts."""
  rng = np.random.default_rng(seed)

  def tokens(low, high):
    return rng.integers(1, _VOCAB, rng.integers(low, high)).astype(np.int32)

  pairs = []
  for i in range(count):
    prompt, chosen, rejected = tokens(2, 7), tokens(1, 9), tokens(1, 9)
    if i % 4 == 1:  # Agreeing for a few tokens after the prompt.
      k = min(len(chosen), len(rejected)) - 1
      rejected[:k] = chosen[:k]
    if i % 4 == 2:  # One-token responses.
      chosen, rejected = chosen[:1], tokens(1, 2)
    if i % 4 == 3:  # The prompt cut to its last tokens, as encode does.
      cut = encode.truncate(
        tokens(20, 24), chosen, rejected, max_length=12, max_prompt_length=4
      )
      assert cut.prompt_truncated
      prompt, chosen, rejected = (
        np.asarray(x, np.int32) for x in (cut.prompt, cut.chosen, cut.rejected)
      )
    if np.array_equal(chosen, rejected):
      rejected = np.append(rejected, 7).astype(np.int32)
    pairs.append(encode.TokenizedPair(i, prompt, chosen, rejected))
  return pairs


def _shared(entries, length=_LENGTH, row_multiple=1):
  rows, slots = shared_rows.layout_shape([entries], length, row_multiple)
  return shared_rows.pack_shared(
    entries, packed_length=length, pad_id=0, num_rows=rows, num_slots=slots
  )


def _model():
  model = models.build(models.tiny_config("llama").replace(vocab_size=_VOCAB))
  reference = models_testing.random_params(model, seed=0, scale=0.3)
  noise = models_testing.random_params(model, seed=1, scale=1.0)
  policy = jax.tree.map(lambda r, n: r + 0.05 * n, reference, noise)
  return model, reference, policy


def _by_pair(stats, ids, weights):
  """Per pair id: every sequence field, and the token fields' response
  values in order (their positions differ between layouts)."""
  out = {}
  flat = {k: np.asarray(v) for k, v in stats._asdict().items() if v is not None}
  where = flat.pop("chosen_where")
  for k, (i, w) in enumerate(zip(np.asarray(ids), np.asarray(weights))):
    if w <= 0:
      continue
    values = {}
    for name, value in flat.items():
      if name.startswith("chosen_token_"):
        values[name] = value[k][where[k]]
      else:
        values[name] = value[k]
    out[int(i)] = values
  return out


def test_layout_of_one_pair():
  pair = encode.TokenizedPair(
    5, np.array([1, 2, 3]), np.array([4, 5]), np.array([6, 7, 8])
  )
  batch = _shared([(pair, 1.0)], length=10)
  np.testing.assert_array_equal(
    batch.input_ids[0], [1, 2, 3, 4, 5, 6, 7, 8, 0, 0]
  )
  np.testing.assert_array_equal(
    batch.positions[0], [0, 1, 2, 3, 4, 3, 4, 5, 0, 0]
  )
  np.testing.assert_array_equal(
    batch.branch_ids[0], [0, 0, 0, 1, 1, 2, 2, 2, 0, 0]
  )
  np.testing.assert_array_equal(
    batch.segment_ids[0], [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]
  )
  # The step axis starts at the prompt's last token (index 2).
  np.testing.assert_array_equal(batch.labels[0, 2:4], [4, 5])
  np.testing.assert_array_equal(batch.chosen_loss_mask[0].nonzero()[0], [2, 3])
  np.testing.assert_array_equal(batch.rejected_labels[0, 2:5], [6, 7, 8])
  np.testing.assert_array_equal(
    batch.rejected_loss_mask[0].nonzero()[0], [2, 3, 4]
  )
  # y_l's step 0 from the extra head position T + 0, steps 1, 2 from the
  # positions of its tokens 6 and 7.
  np.testing.assert_array_equal(batch.rejected_source[0, 2:5], [10, 5, 6])
  np.testing.assert_array_equal(batch.prompt_ends[0], [2])
  assert batch.count_tokens() == 2 * 3 + 2 + 3


def test_responses_never_see_each_other():
  """The model's hidden states on shared rows equal each sequence run alone
  (prompt + response, one right-padded row each), for every token of both
  responses."""
  model, _, params = _model()
  pairs = _pairs(count=4, seed=1)
  batch = _shared([(p, 1.0) for p in pairs])
  hidden, _ = jax.jit(model.hidden_states)(
    params,
    jnp.asarray(batch.input_ids),
    segment_ids=jnp.asarray(batch.segment_ids),
    positions=jnp.asarray(batch.positions),
    branch_ids=jnp.asarray(batch.branch_ids),
  )
  sequences = [
    np.concatenate([p.prompt, getattr(p, side)])
    for p in pairs
    for side in ("chosen", "rejected")
  ]
  ids = np.zeros((len(sequences), _LENGTH), np.int32)
  mask = np.zeros_like(ids)
  for k, sequence in enumerate(sequences):
    ids[k, : len(sequence)], mask[k, : len(sequence)] = sequence, 1
  alone, _ = jax.jit(model.hidden_states)(
    params, jnp.asarray(ids), jnp.asarray(mask)
  )
  for r, s in zip(*np.nonzero(batch.pair_example_weight)):
    i = batch.pair_example_id[r, s]
    seg = np.nonzero(batch.segment_ids[r] == s + 1)[0]
    branches = batch.branch_ids[r, seg]
    for k, branch in ((2 * i, 1), (2 * i + 1, 2)):
      mine = seg[(branches == 0) | (branches == branch)]
      np.testing.assert_allclose(
        hidden[r, mine],
        alone[k, : len(mine)],
        # Rounding of rows of other lengths; a token seen across branches
        # moves these states by 1e-2 and more.
        rtol=1e-4,
        atol=1e-4,
        err_msg=f"pair {i}, branch {branch}",
      )


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
def test_every_pair_statistic_equals_the_paired_layout(fused):
  model, _, params = _model()
  entries = [(p, 1.0) for p in _pairs(count=10, seed=2)]
  paired = batching.collate_pairs(entries, buckets=(_LENGTH,), pad_id=0)
  shared = _shared(entries)
  assert shared.input_ids.shape[0] < len(entries)  # Pairs share rows.
  # Small tiles, so the fused head's walk crosses several of them.
  head = slpo_jax.HeadOptions(
    fused=fused, vocab_chunk_size=128, token_chunk_size=64
  )

  def stats(batch):
    return jax.jit(
      functools.partial(
        objective.batch_stats, model, pair_values=True, head=head
      )
    )(params, jax.tree.map(jnp.asarray, batch))

  want = _by_pair(stats(paired), paired.pair_ids(), paired.pair_weights())
  got = _by_pair(stats(shared), shared.pair_ids(), shared.pair_weights())
  assert got.keys() == want.keys() == set(range(len(entries)))
  for i in want:
    assert got[i].keys() == want[i].keys()
    for name in want[i]:
      np.testing.assert_allclose(
        got[i][name],
        want[i][name],
        rtol=1e-5,
        atol=1e-5,
        err_msg=f"pair {i}: {name}",
      )


def _with_cached_reference(batch, model, reference):
  """The batch carrying its reference log-probs, as train.reference does."""
  stats = jax.jit(
    functools.partial(
      objective.batch_stats,
      model,
      pair_values=False,
      head=slpo_jax.HeadOptions(),
    )
  )(reference, jax.tree.map(jnp.asarray, batch))
  shape = batch.per_pair_shape
  return batch.with_reference(
    np.asarray(stats.chosen_logps).reshape(shape),
    np.asarray(stats.rejected_logps).reshape(shape),
  )


@pytest.mark.parametrize("reference_mode", ["online", "precomputed"])
def test_train_step_equals_the_paired_step(reference_mode):
  # DPO, soft SLPO (the pair complement) and AOT (which sorts the batch's
  # pairs) summed: loss, every metric and every gradient.
  loss = "dpo,slpo_soft,aot"
  model, reference, policy = _model()
  entries = [(p, 1.0) for p in _pairs(count=8, seed=4)]
  paired = batching.collate_pairs(entries, buckets=(_LENGTH,), pad_id=0)
  shared = _shared(entries)
  precomputed = reference_mode == "precomputed"
  if precomputed:
    paired = _with_cached_reference(paired, model, reference)
    shared = _with_cached_reference(shared, model, reference)
  run = functools.partial(
    sgd_step,
    model=model,
    loss=loss,
    head=slpo_jax.HeadOptions(fused=True),
    precomputed=precomputed,
  )
  want, want_grads = run(policy, reference, paired)
  got, got_grads = run(policy, reference, shared)
  assert bool(got["finite"])
  fraction = got.pop("real_token_fraction")
  spans = sum(shared_rows.shared_span(p) for p, _ in entries)
  np.testing.assert_allclose(fraction, spans / shared.segment_ids.size)
  assert got.keys() == want.keys()
  for name in want:
    np.testing.assert_allclose(
      got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name
    )
  for (path, g), w in zip(
    jax.tree_util.tree_leaves_with_path(got_grads), jax.tree.leaves(want_grads)
  ):
    np.testing.assert_allclose(
      g, w, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path)
    )


def test_abstract_batch_has_the_host_batch_structure():
  entries = [(p, 1.0) for p in _pairs(count=4)]
  host = _shared(entries)
  rows, slots = host.per_pair_shape
  shaped = batch_lib.abstract(
    rows=rows, length=_LENGTH, slots=slots, share_prompt=True
  )
  assert jax.tree.structure(shaped) == jax.tree.structure(host)
  for a, b in zip(jax.tree.leaves(shaped), jax.tree.leaves(host)):
    assert a.shape == b.shape and a.dtype == b.dtype


def test_rows_split_over_devices_with_the_fused_head():
  """Four devices on the batch axis, each running the fused head on its own
  shared-prompt rows (under shard_map), give the one-device statistics."""
  devices = 4
  model, _, params = _model()
  entries = [(p, 1.0) for p in _pairs(count=8, seed=5)]
  batch = _shared(entries, row_multiple=devices)
  assert batch.input_ids.shape[0] % devices == 0
  mesh = slpo_jax.sharding.make_mesh(devices, devices=jax.devices()[:devices])
  head = slpo_jax.HeadOptions(fused=True)

  def stats(params, batch, mesh):
    s = objective.batch_stats(
      model, params, batch, pair_values=True, head=head, mesh=mesh
    )
    return s._replace(chosen_token_logps=None, chosen_where=None)

  want = jax.jit(functools.partial(stats, mesh=None))(
    params, jax.tree.map(jnp.asarray, batch)
  )
  spread = slpo_jax.sharding.global_batch(batch, mesh)
  assert len(spread.input_ids.sharding.device_set) == devices
  on_mesh = jax.device_put(params, slpo_jax.sharding.replicated(mesh))
  got = jax.jit(functools.partial(stats, mesh=mesh))(on_mesh, spread)
  for name, value in want._asdict().items():
    if value is not None:
      np.testing.assert_allclose(
        getattr(got, name), value, rtol=1e-5, atol=1e-5, err_msg=name
      )
