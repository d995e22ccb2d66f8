"""Precomputed reference log-probabilities, cached on disk.

One pass over the data computes ``log pi_ref(y_w)`` and ``log pi_ref(y_l)`` of
every pair this process reads; the result is saved under a key made of the
dataset's fingerprint, the reference parameters' hash and the settings that
change the values (lengths, loss head). Later runs with the same key load it,
and training steps then run no reference forward pass at all.
"""

import hashlib
import json
import os
import pathlib

import jax
import numpy as np

from slpo_jax import losses
from slpo_jax import sharding
from train import objective
from train import progress
from train import stopping
from train.batch import Batch


def params_fingerprint(params) -> str:
  """A short hash of a parameter tree's values."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(params)):
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()[:16]


def _stats_fn(model, head, ld_alpha=None):
  """The reference's sequence log-probs of a batch; with ``ld_alpha``,
  LD-DPO's desensitised ones (the cache then holds those, as TRL's)."""

  def stats(params, batch):
    out = objective.batch_stats(
      model, params, batch, pair_values=False, head=head
    )
    if ld_alpha is None:
      return out.chosen_logps, out.rejected_logps
    return (
      losses.length_desensitized_logps(
        out.chosen_logps, out.chosen_shared_logps, ld_alpha=ld_alpha
      ),
      losses.length_desensitized_logps(
        out.rejected_logps, out.rejected_shared_logps, ld_alpha=ld_alpha
      ),
    )

  return jax.jit(stats)


class ReferenceCache:
  """Reference log-probs by example id, attached to batches as they pass."""

  def __init__(self, values: dict[tuple[str, int], tuple[float, float]]):
    # Keyed by (split, example_id): ids are positions within one source, so a
    # separate eval file reuses the train split's ids.
    self._values = values

  @classmethod
  def build(
    cls,
    workdir,
    config,
    model,
    reference_params,
    pipeline,
    mesh,
    *,
    dataset_fingerprint: str,
    head,
  ) -> "ReferenceCache":
    key_fields = {
      "data": dataset_fingerprint,
      "reference": params_fingerprint(reference_params),
      "max_length": config.data.max_length,
      "max_prompt_length": config.data.max_prompt_length,
      "buckets": list(config.data.length_buckets),
      "head": config.model.loss_head,
      "dtype": config.model.dtype,
    }
    ld_alpha = objective.dpo_options(config.loss).ld_alpha
    if ld_alpha is not None:
      # Only then, so that the caches of runs without it keep their names.
      key_fields["ld_alpha"] = ld_alpha
    key = hashlib.sha256(
      json.dumps(key_fields, sort_keys=True).encode()
    ).hexdigest()[:16]
    path = (
      pathlib.Path(workdir)
      / "reference_logps"
      / f"{key}.process{jax.process_index()}.npz"
    )
    if path.exists():
      stored = np.load(path)
      keys = zip(stored["split"].tolist(), stored["example_id"].tolist())
      return cls(
        dict(
          zip(keys, zip(stored["chosen"].tolist(), stored["rejected"].tolist()))
        )
      )
    stats = _stats_fn(model, head, ld_alpha)
    values = {}
    with stopping.StopRequests() as stop:
      for split in ("train", "eval"):
        for batch in progress.progress(
          pipeline(split, single_pass=True),
          desc=f"reference log-probs ({split})",
          disable=jax.process_index() != 0,
        ):
          c, r = stats(reference_params, sharding.global_batch(batch, mesh))
          # Each process keeps the rows it owns: its addressable shards.
          c, r = _local_rows(c), _local_rows(r)
          # One flat axis of pairs, in batch_stats's order.
          ids, weights = batch.pair_ids(), batch.pair_weights()
          for i, cv, rv, w in zip(ids, c, r, weights):
            if w > 0:
              values[(split, int(i))] = (float(cv), float(rv))
          if stop.signal:
            # A pass over the data, cheaper to redo than to resume.
            raise stopping.Stopped(
              stop.signal,
              f"{stop.signal} received while computing the reference"
              " log-probs: nothing to keep; rerun the same command to start"
              " them again",
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted(values)
    # Written whole or not at all: a cut-short write (a kill, a full disk)
    # leaves no cache behind to be read back on the next run.
    partial = path.with_name(path.name + ".tmp")
    with partial.open("wb") as file:
      np.savez(
        file,
        split=np.array([k[0] for k in keys]),
        example_id=np.array([k[1] for k in keys], np.int64),
        chosen=np.array([values[k][0] for k in keys], np.float32),
        rejected=np.array([values[k][1] for k in keys], np.float32),
      )
    os.replace(partial, path)
    return cls(values)

  def _attach(self, batch: Batch, split: str) -> Batch:
    found = [
      self._values[(split, int(i))] if w > 0 else (0.0, 0.0)
      for i, w in zip(batch.pair_ids(), batch.pair_weights())
    ]
    # Per pair: [B], or [R, S] for a packed batch.
    shape = batch.per_pair_shape
    return batch.with_reference(
      np.array([c for c, _ in found], np.float32).reshape(shape),
      np.array([r for _, r in found], np.float32).reshape(shape),
    )

  def attach(self, iterator):
    """The training iterator, its batches carrying reference log-probs."""
    return _AttachingIterator(iterator, lambda b: self._attach(b, "train"))

  def attach_all(self, batches):
    """Evaluation batches carrying reference log-probs."""
    return (self._attach(b, "eval") for b in batches)


def _local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded array, in order."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  seen, rows = set(), []
  for shard in shards:
    start = shard.index[0].start or 0
    if start in seen:  # Replicas over the tensor axis hold the same rows.
      continue
    seen.add(start)
    rows.append(np.asarray(shard.data))
  return np.concatenate(rows)


class _AttachingIterator:
  """Wraps a checkpointable iterator; its state is the wrapped one's."""

  def __init__(self, inner, attach):
    self._inner = inner
    self._attach = attach

  def __iter__(self):
    return self

  def __next__(self):
    return self._attach(next(self._inner))

  def get_state(self):
    return self._inner.get_state()

  def set_state(self, state):
    self._inner.set_state(state)
