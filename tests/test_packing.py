"""Packed pairs give the statistics of the same pairs unpacked."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import slpo_jax
from slpo_jax import models
from slpo_jax import packing
from tests.models import models_testing

# (prompt, chosen, rejected) lengths: responses that branch, one a prefix of
# the other (both ways), and a pair shorter than the rest.
_SHAPES = [(3, 5, 2), (2, 4, 6), (4, 3, 3), (2, 1, 4), (3, 6, 5)]
# Pairs per packed row, in order: 3 + 2 pairs in two rows, one slot empty.
_ROWS = [[0, 1, 2], [3, 4]]
_PACKED_LENGTH = 28
_SLOTS = 3


def _random_pairs(seed: int = 0):
  rng = np.random.default_rng(seed)
  pairs = []
  for i, (p, c, r) in enumerate(_SHAPES):
    prompt = rng.integers(1, 500, p)
    chosen = rng.integers(1, 500, c)
    rejected = rng.integers(1, 500, r)
    if i == 1:  # y_w a prefix of y_l.
      rejected[:c] = chosen
    if i == 2:  # A shared first token, then a branch.
      rejected[0] = chosen[0]
    if i == 3:  # y_w a prefix of y_l.
      rejected[:1] = chosen
    pairs.append((prompt, chosen, rejected))
  return pairs


def _rows_of(pairs, layout, length):
  """Chosen and rejected arrays (and segment ids, positions) of ``layout``.

  ``layout`` lists the pairs of each row; every pair takes prompt + the
  longer response in both rows.
  """
  rows = len(layout)
  out = {
    f"{side}_{key}": np.zeros([rows, length], dtype)
    for side in ("chosen", "rejected")
    for key, dtype in (
      ("input_ids", np.int32),
      ("mask", np.int32),
      ("labels", np.int32),
      ("where", bool),
    )
  }
  out["segment_ids"] = np.zeros([rows, length], np.int32)
  out["positions"] = np.zeros([rows, length], np.int32)
  places = {}
  for r, members in enumerate(layout):
    offset = 0
    for s, i in enumerate(members):
      prompt, chosen, rejected = pairs[i]
      span = len(prompt) + max(len(chosen), len(rejected))
      out["segment_ids"][r, offset : offset + span] = s + 1
      out["positions"][r, offset : offset + span] = np.arange(span)
      for side, response in (("chosen", chosen), ("rejected", rejected)):
        tokens = np.concatenate([prompt, response])
        n = len(tokens)
        at = slice(offset, offset + n)
        out[f"{side}_input_ids"][r, at] = tokens
        out[f"{side}_mask"][r, at] = 1
        out[f"{side}_labels"][r, offset : offset + n - 1] = tokens[1:]
        out[f"{side}_where"][r, offset + len(prompt) - 1 : offset + n - 1] = 1
      places[i] = (r, s, offset, span)
      offset += span
    assert offset <= length
  return out, places


# Compiled without backend optimisation: half the compile time on CPU.
@functools.partial(
  jax.jit,
  static_argnames=("model", "fused", "packed"),
  compiler_options={"xla_backend_optimization_level": 0},
)
def _stats(model, params, arrays, *, fused, packed):
  ids = jnp.concatenate(
    [arrays["chosen_input_ids"], arrays["rejected_input_ids"]]
  )
  mask = jnp.concatenate([arrays["chosen_mask"], arrays["rejected_mask"]])
  n = arrays["chosen_input_ids"].shape[0]
  segments = {}
  if packed:
    # Each row's own padding (the shorter response's tail) is segment 0.
    both = jnp.concatenate([arrays["segment_ids"]] * 2)
    hidden, lm_head = model.hidden_states(
      params,
      ids,
      segment_ids=both * mask,
      positions=jnp.concatenate([arrays["positions"]] * 2),
    )
    segments = dict(segment_ids=arrays["segment_ids"], num_segments=_SLOTS)
  else:
    hidden, lm_head = model.hidden_states(params, ids, mask)
  return slpo_jax.pair_stats_from_hidden(
    hidden[:n],
    hidden[n:],
    lm_head,
    arrays["chosen_labels"],
    arrays["rejected_labels"],
    chosen_where=arrays["chosen_where"],
    rejected_where=arrays["rejected_where"],
    pair_values=True,
    # With the entropy and log sum p^2 sums: every field is filled.
    head=slpo_jax.HeadOptions(
      fused=fused, vocab_chunk_size=128, distribution_stats=True
    ),
    **segments,
  )


_TOKEN_FIELDS = (
  "chosen_token_logps",
  "chosen_token_pair_not_logps",
  "chosen_where",
)


@pytest.mark.parametrize("fused", [False, True])
def test_packed_stats_equal_unpacked(fused):
  model = models.build(models.tiny_config("llama"))
  params = models_testing.random_params(model, scale=0.3)
  pairs = _random_pairs()
  longest = max(len(p) + max(len(c), len(r)) for p, c, r in pairs)
  unpacked, _ = _rows_of(pairs, [[i] for i in range(len(pairs))], longest)
  packed, places = _rows_of(pairs, _ROWS, _PACKED_LENGTH)
  want = _stats(model, params, unpacked, fused=fused, packed=False)
  got = _stats(model, params, packed, fused=fused, packed=True)

  for field, value in got._asdict().items():
    assert value is not None, field
    value = np.asarray(value)
    assert value.shape[:2] == (len(_ROWS), _SLOTS), field
    for i, (r, s, offset, span) in places.items():
      expected = np.asarray(getattr(want, field))[i]
      if field in _TOKEN_FIELDS:
        row = value[r, s]
        # The pair's positions, and nothing outside its segment.
        outside = np.delete(row, np.arange(offset, offset + span))
        assert not np.any(outside), field
        actual, expected = row[offset : offset + span], expected[:span]
      else:
        actual = value[r, s]
      np.testing.assert_allclose(
        actual, expected, rtol=1e-5, atol=1e-5, err_msg=f"{field} pair {i}"
      )
  # The empty slot holds no pair.
  assert not np.asarray(got.counted)[1, 2]
  assert np.asarray(got.counted).sum() == len(pairs)


def _token_values(pairs, layout, places, length, rng):
  """Per-token values of likely tokens (p near 1, where the complements
  take their first-mismatch form), placed as ``layout`` places the pairs;
  every other position holds noise that must not leak into a pair."""
  rows = len(layout)
  noise = lambda: rng.uniform(-3.0, -0.1, [rows, length])  # noqa: E731
  fields = {k: noise() for k in ("logp_w", "not_w", "pair_not", "logp_l")}
  fields["not_l"] = noise()
  for i in range(len(pairs)):
    r, _, offset, span = places[i]
    at = slice(offset, offset + span)
    p_w, p_l = rng.uniform(0.97, 0.999, [2, span])
    fields["logp_w"][r, at], fields["not_w"][r, at] = (
      np.log(p_w),
      np.log1p(-p_w),
    )
    fields["logp_l"][r, at], fields["not_l"][r, at] = (
      np.log(p_l),
      np.log1p(-p_l),
    )
    fields["pair_not"][r, at] = np.log(np.maximum(1 - p_w - 1e-3, 1e-6))
  return fields


@functools.partial(jax.jit, static_argnames="packed")
def _from_token_values(arrays, values, *, packed):
  segments = {}
  if packed:
    segments = dict(segment_ids=arrays["segment_ids"], num_segments=_SLOTS)
  return slpo_jax.pair_stats_from_token_logps(
    slpo_jax.logprobs.TokenLogps(values["logp_w"], values["not_w"]),
    slpo_jax.logprobs.TokenLogps(values["logp_l"], values["not_l"]),
    arrays["chosen_labels"],
    arrays["rejected_labels"],
    chosen_where=arrays["chosen_where"],
    rejected_where=arrays["rejected_where"],
    chosen_token_pair_not_logps=values["pair_not"],
    **segments,
  )


def test_packed_reductions_restart_at_each_segment():
  """The complements' prefix sums, with p near 1 (first-mismatch form)."""
  pairs = _random_pairs(seed=1)
  longest = max(len(p) + max(len(c), len(r)) for p, c, r in pairs)
  single = [[i] for i in range(len(pairs))]
  unpacked, unpacked_places = _rows_of(pairs, single, longest)
  packed, places = _rows_of(pairs, _ROWS, _PACKED_LENGTH)
  # The same values per pair in both layouts: draw them once, unpacked,
  # then copy each pair's span into its packed place.
  values = _token_values(
    pairs, single, unpacked_places, longest, np.random.default_rng(0)
  )
  packed_values = _token_values(
    pairs, _ROWS, places, _PACKED_LENGTH, np.random.default_rng(1)
  )
  for i, (r, _, offset, span) in places.items():
    for key in values:
      packed_values[key][r, offset : offset + span] = values[key][i, :span]
  want = _from_token_values(unpacked, values, packed=False)
  got = _from_token_values(packed, packed_values, packed=True)
  # Likely responses (pi > 1/2): the complements take the first-mismatch
  # form, whose prefix sums are what must restart at each segment.
  assert np.all(np.asarray(want.chosen_logps) > np.log(0.5))
  assert np.all(np.asarray(want.rejected_logps) > np.log(0.5))
  for field in (
    "chosen_logps",
    "rejected_logps",
    "chosen_not_logps",
    "rejected_not_logps",
    "pair_not_logps",
  ):
    expected = np.asarray(getattr(want, field))
    actual = np.asarray(getattr(got, field))
    for i, (r, s, _, _) in places.items():
      np.testing.assert_allclose(
        actual[r, s], expected[i], rtol=1e-5, atol=1e-6, err_msg=field
      )


def test_pairs_first_flattens_slots():
  tree = (jnp.zeros([2, 3]), None, jnp.zeros([2, 3, 5]))
  flat = packing.pairs_first(tree)
  assert flat[0].shape == (6,) and flat[1] is None and flat[2].shape == (6, 5)
