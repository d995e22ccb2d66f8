"""``generate``: KV-cache decoding against full forward passes, and sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from slpo_jax import models
from slpo_jax.models import sampling

from models_testing import apply
from models_testing import random_params

MAX_NEW = 6
PAD = 0
# The features the newer families add to the decoding path: q/k norms,
# Gemma's norms, embedding scale and caps, and sliding and global layers
# (with their own rotary bases) under one scanned block, so the cache path
# reads traced per-layer windows.
_GEMMA = dict(
  norm_plus_one=True,
  embed_scale=True,
  sandwich_norms=True,
  activation="gelu_tanh",
  tie_embeddings=True,
  layer_types=("sliding_attention", "full_attention"),
  sliding_window=3,
  attn_logit_softcap=2.0,
  final_logit_softcap=3.0,
  query_scale=0.3,
  scan_layers=True,
)
NEW_FAMILIES = {
  "qwen3": dict(qk_norm=True),
  # 4-token tiles: the 7-token prefill over 13 cache slots runs blockwise.
  "gemma3_scanned": dict(
    _GEMMA, qk_norm=True, rope_local_theta=100.0, attention_block=4
  ),
}


def _tiny(kind):
  if kind == "mistral":
    # A window shorter than prompt + completion, so the cache path must mask.
    config = models.tiny_config("llama", vocab_size=64, sliding_window=5)
  elif kind in NEW_FAMILIES:
    config = models.tiny_config("llama", vocab_size=64, **NEW_FAMILIES[kind])
  elif kind == "llama_scanned":
    # The cache is then one stacked array carried through ``nn.scan``.
    config = models.tiny_config("llama", vocab_size=64, scan_layers=True)
  else:
    config = models.tiny_config(kind, vocab_size=64)
  model = models.build(config)
  return model, random_params(model, seed=1, scale=0.3)


# Every distinct set of static arguments compiles the whole decoding loop
# (seconds of CPU), so the cache-correctness tests cover all architectures
# and the sampling options, whose code is shared, are tested on one.
@pytest.fixture(
  scope="module", params=["gpt2", "llama", "mistral", "llama_scanned"]
)
def tiny(request):
  return _tiny(request.param)


@pytest.fixture(scope="module")
def llama():
  return _tiny("llama")


def _prompts(lengths=(7, 4, 1), width=7, seed=0):
  """Right-padded prompts of different lengths."""
  rng = np.random.default_rng(seed)
  mask = (np.arange(width)[None] < np.array(lengths)[:, None]).astype(np.int32)
  ids = rng.integers(3, 64, (len(lengths), width)).astype(np.int32) * mask
  return ids, mask


def _greedy_without_cache(model, params, ids, mask, steps):
  """Greedy decoding by re-running the full model on the growing rows."""
  rows = [list(r[m == 1]) for r, m in zip(ids, mask)]
  out = [[] for _ in rows]
  # One width for all steps, so the reference compiles once.
  width = ids.shape[1] + steps
  for _ in range(steps):
    batch = np.array([r + [PAD] * (width - len(r)) for r in rows], np.int32)
    batch_mask = np.array(
      [[1] * len(r) + [0] * (width - len(r)) for r in rows], np.int32
    )
    logits = apply(model, params, batch, batch_mask)
    for i, row in enumerate(rows):
      token = int(jnp.argmax(logits[i, len(row) - 1]))
      row.append(token)
      out[i].append(token)
  return np.array(out)


def _generate(model, params, ids, mask, **kwargs):
  kwargs.setdefault("rng", jax.random.key(0))
  kwargs.setdefault("max_new_tokens", MAX_NEW)
  return models.generate(model, params, ids, mask, pad_id=PAD, **kwargs)


def test_greedy_cache_matches_full_forward(tiny):
  model, params = tiny
  ids, mask = _prompts()
  out = _generate(model, params, ids, mask, temperature=0.0)
  expected = _greedy_without_cache(model, params, ids, mask, MAX_NEW)
  np.testing.assert_array_equal(out.tokens, expected)
  np.testing.assert_array_equal(out.mask, 1)
  np.testing.assert_array_equal(out.lengths, MAX_NEW)


@pytest.mark.parametrize("kind", NEW_FAMILIES)
def test_greedy_cache_matches_full_forward_new_families(kind):
  test_greedy_cache_matches_full_forward(_tiny(kind))


def test_left_padding_gives_the_same_tokens(tiny):
  model, params = tiny
  ids, mask = _prompts()
  right = _generate(model, params, ids, mask, temperature=0.0)
  shifts = mask.shape[1] - mask.sum(-1)
  left_ids = np.stack([np.roll(r, s) for r, s in zip(ids, shifts)])
  left_mask = np.stack([np.roll(r, s) for r, s in zip(mask, shifts)])
  left = _generate(model, params, left_ids, left_mask, temperature=0.0)
  np.testing.assert_array_equal(left.tokens, right.tokens)
  np.testing.assert_array_equal(left.sequences, right.sequences)


def test_sequences_concatenate_prompt_and_completion(tiny):
  model, params = tiny
  ids, mask = _prompts()
  out = _generate(model, params, ids, mask, temperature=0.0)
  for row in range(ids.shape[0]):
    length = int(mask[row].sum())
    expected = np.concatenate([ids[row, :length], out.tokens[row]])
    total = length + MAX_NEW
    np.testing.assert_array_equal(out.sequences[row, :total], expected)
    np.testing.assert_array_equal(out.sequences[row, total:], PAD)
    np.testing.assert_array_equal(
      out.sequence_mask[row], np.arange(ids.shape[1] + MAX_NEW) < total
    )


def test_same_key_same_samples(llama):
  model, params = llama
  ids, mask = _prompts()
  a = _generate(model, params, ids, mask, rng=jax.random.key(7))
  b = _generate(model, params, ids, mask, rng=jax.random.key(7))
  c = _generate(model, params, ids, mask, rng=jax.random.key(8))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)


def test_top_k_one_and_tiny_top_p_are_greedy(llama):
  model, params = llama
  ids, mask = _prompts()
  greedy = _generate(model, params, ids, mask, temperature=0.0)
  top_k = _generate(
    model, params, ids, mask, temperature=1.5, top_k=1, rng=jax.random.key(3)
  )
  top_p = _generate(
    model, params, ids, mask, temperature=1.0, top_p=1e-6, rng=jax.random.key(4)
  )
  np.testing.assert_array_equal(top_k.tokens, greedy.tokens)
  np.testing.assert_array_equal(top_p.tokens, greedy.tokens)


def test_eos_stops_rows(llama):
  model, params = llama
  ids, mask = _prompts()
  free = _generate(model, params, ids, mask, temperature=0.0)
  # One id per row, from different steps; each row stops at the first of
  # any of them, and once every row has stopped the loop ends.
  eos = [int(free.tokens[0, 2]), int(free.tokens[1, 0]), int(free.tokens[2, 3])]
  for pad in (PAD, eos[0]):  # The pad id may itself be an EOS id.
    out = models.generate(
      model,
      params,
      ids,
      mask,
      rng=jax.random.key(0),
      max_new_tokens=MAX_NEW,
      temperature=0.0,
      eos_id=eos,
      pad_id=pad,
    )
    for row in range(ids.shape[0]):
      hits = np.flatnonzero(np.isin(free.tokens[row], eos))
      length = hits[0] + 1
      assert out.lengths[row] == length
      np.testing.assert_array_equal(
        out.tokens[row, :length], free.tokens[row, :length]
      )
      np.testing.assert_array_equal(out.tokens[row, length:], pad)
      np.testing.assert_array_equal(out.mask[row], np.arange(MAX_NEW) < length)
    assert np.all(np.asarray(out.lengths) <= [3, 1, 4])


def test_sampling_settings_do_not_recompile(llama):
  model, params = llama
  ids, mask = _prompts()
  _generate(model, params, ids, mask, temperature=0.7)
  _generate(model, params, ids, mask, temperature=0.7, top_k=3)
  # New temperature, top_k and top_p values reuse the compiled loops.
  before = sampling._generate._cache_size()
  _generate(model, params, ids, mask, temperature=0.9)
  _generate(model, params, ids, mask, temperature=0.9, top_k=5)
  _generate(model, params, ids, mask, temperature=0.9, top_k=7, top_p=0.5)
  assert sampling._generate._cache_size() == before


def test_bad_arguments():
  model = models.build(models.tiny_config("gpt2"))
  ids, mask = _prompts()
  params = model.abstract_params()
  with pytest.raises(ValueError, match="max_new_tokens"):
    models.generate(
      model, params, ids, mask, rng=jax.random.key(0), max_new_tokens=0
    )
  with pytest.raises(ValueError, match="top_k"):
    models.generate(
      model, params, ids, mask, rng=jax.random.key(0), max_new_tokens=2, top_k=0
    )
  with pytest.raises(ValueError, match="learned positions"):
    models.generate(
      model,
      params,
      ids,
      mask,
      rng=jax.random.key(0),
      max_new_tokens=model.config.max_len,
    )


def test_filters_and_sampling_distribution():
  probs = np.array([0.5, 0.3, 0.15, 0.05], np.float32)
  logits = jnp.log(jnp.tile(probs, (10000, 1)))
  rng = jax.random.key(0)

  def frequencies(limits):
    tokens = sampling._sample(logits, rng, jnp.float32(1.0), limits)
    return np.bincount(np.asarray(tokens), minlength=4) / tokens.shape[0]

  np.testing.assert_allclose(frequencies(None), probs, atol=0.02)
  top_k = (jnp.int32(2), jnp.float32(2.0))
  np.testing.assert_allclose(
    frequencies(top_k), [0.625, 0.375, 0, 0], atol=0.02
  )
  # Mass before each token: 0, 0.5, 0.8, 0.95; top_p=0.7 keeps two tokens.
  top_p = (jnp.int32(4), jnp.float32(0.7))
  np.testing.assert_allclose(
    frequencies(top_p), [0.625, 0.375, 0, 0], atol=0.02
  )
  both = (jnp.int32(1), jnp.float32(0.9))
  np.testing.assert_array_equal(frequencies(both), [1, 0, 0, 0])
