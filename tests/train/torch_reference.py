"""An independent float64 PyTorch reference for the training step's inputs.

The training program turns a host batch of preference pairs into per-example
statistics (sequence log-probabilities, their complements, lengths and
per-token values) and feeds them to its losses. This module computes the same
statistics with the Hugging Face `transformers` model in float64, directly
and naively (``log_softmax``, ``gather``, ``log1p``), and back-propagates
through it with `torch.autograd`. It shares no code with the program or with
`slpo_jax.logprobs`: only the weight-name mapping of
`slpo_jax.models.hf_weights` (and `save_hf_checkpoint`, to hand our weights
to `transformers`) is reused, so a test can check a train step against it.

Naive float64 forms are exact enough here: the tiny test models keep every
probability far from 0 and 1, where ``log1p(-exp(x))`` loses nothing.
"""

import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from slpo_jax import models
from slpo_jax.models import hf_weights
from slpo_jax.models import save_hf_checkpoint
from train.data.batching import collate_pairs
from train.data.encode import TokenizedPair

# The outputs of ``pair_statistics`` that depend on the weights smoothly.
DIFFERENTIABLE = (
  "chosen_logps",
  "rejected_logps",
  "chosen_not_logps",
  "rejected_not_logps",
  "pair_not_logps",
  "chosen_token_logps",
  "chosen_token_pair_not_logps",
)


def torch_model(model_config, params) -> torch.nn.Module:
  """The `transformers` model holding exactly ``params``, in float64.

  Args:
    model_config: the `slpo_jax.models.DecoderConfig` of ``params``.
    params: our nested dict of parameters (scanned or not, as the config).

  Returns:
    The ``*ForCausalLM`` module, float64, in eval mode, with gradients
    enabled on its parameters.
  """
  with tempfile.TemporaryDirectory() as folder:
    # float32 tensors widen exactly to float64 on loading.
    save_hf_checkpoint(model_config, params, folder, dtype="float32")
    model = transformers.AutoModelForCausalLM.from_pretrained(
      folder, dtype=torch.float64, attn_implementation="eager"
    )
  model.eval()
  for parameter in model.parameters():
    parameter.requires_grad_(True)
  return model


def _side(model, batch, side: str) -> dict[str, torch.Tensor]:
  """Per-position log-probabilities of one side of the pairs."""
  ids = torch.from_numpy(np.asarray(batch[f"{side}_input_ids"], np.int64))
  mask = torch.from_numpy(np.asarray(batch[f"{side}_attention_mask"], np.int64))
  where = torch.from_numpy(np.asarray(batch[f"{side}_loss_mask"], bool))
  labels = torch.from_numpy(np.asarray(batch[f"{side}_labels"], np.int64))
  labels = torch.where(where, labels, 0)
  logits = model(input_ids=ids, attention_mask=mask).logits
  log_probs = torch.log_softmax(logits.to(torch.float64), dim=-1)
  token = torch.gather(log_probs, -1, labels[..., None])[..., 0]
  per_step_mean = logits.to(torch.float64).mean(-1)
  top1 = torch.argmax(logits, dim=-1) == labels
  return dict(
    top1_tokens=(top1 & where).sum(-1).to(torch.float64),
    log_probs=log_probs,
    labels=labels,
    where=where,
    token=torch.where(where, token, 0.0),
    mean_logits=torch.where(where, per_step_mean, 0.0).sum(-1)
    / where.sum(-1).clamp(min=1),
  )


def pair_statistics(model, batch) -> dict[str, torch.Tensor]:
  """Per-example statistics of a host batch of pairs, in float64.

  ``logits[:, t]`` predicts ``labels[:, t]`` where ``loss_mask[:, t]``; the
  chosen and rejected rows share the prompt and so their time axis.

  Args:
    model: from `torch_model`.
    batch: numpy ``chosen_``/``rejected_`` ``input_ids``, ``attention_mask``,
      ``labels`` and ``loss_mask``, all ``[B, T]`` and right-padded.

  Returns:
    Float64 tensors, differentiable w.r.t. the model's parameters:
    ``chosen_logps``, ``rejected_logps``, ``chosen_not_logps``,
    ``rejected_not_logps``, ``pair_not_logps``, ``chosen_lengths``,
    ``rejected_lengths`` (``[B]``), ``chosen_token_logps``,
    ``chosen_token_pair_not_logps`` (``[B, T]``, 0 off the chosen mask) and
    ``chosen_where`` (``[B, T]`` bool), ``counted`` (``[B]`` bool), and the
    metrics
    ``chosen_mean_logits``, ``rejected_mean_logits`` (``[B]``: the logits
    averaged over the vocabulary and the response steps) and
    ``chosen_top1_tokens`` (``[B]``: chosen response tokens that are the
    argmax of their logits). ``pair_not_logps`` is
    ``log(1 - pi(y_w) - pi(y_l))``; for a pair whose two responses are the
    same it is ``log(1 - pi(y_w))``, and if one is a prefix of the other
    (possible only after truncation: distinct EOS-terminated responses never
    are) it is ``log(1 - pi(y_shorter))``, the complement of the set
    ``{y_w, y_l}`` in both cases.
  """
  chosen = _side(model, batch, "chosen")
  rejected = _side(model, batch, "rejected")
  out = {}
  for name, side in (("chosen", chosen), ("rejected", rejected)):
    logps = side["token"].sum(-1)
    out[f"{name}_logps"] = logps
    out[f"{name}_not_logps"] = torch.log1p(-torch.exp(logps))
    out[f"{name}_lengths"] = side["where"].sum(-1).to(torch.float64)
    out[f"{name}_mean_logits"] = side["mean_logits"]
  out["chosen_top1_tokens"] = chosen["top1_tokens"]
  # Both masks start at the last prompt position: where both are True the
  # shorter response lies, and it is a prefix of the other (or the same
  # response) if all its labels agree; the set {y_w, y_l} is then covered by
  # the shorter one alone.
  prefix = torch.all(
    (chosen["labels"] == rejected["labels"])
    | ~(chosen["where"] & rejected["where"]),
    -1,
  )
  chosen_shorter = out["chosen_lengths"] <= out["rejected_lengths"]
  shorter = torch.where(
    chosen_shorter, out["chosen_logps"], out["rejected_logps"]
  )
  both = torch.where(
    prefix,
    torch.exp(shorter),
    torch.exp(out["chosen_logps"]) + torch.exp(out["rejected_logps"]),
  )
  out["pair_not_logps"] = torch.log1p(-both)
  # p_t(b_t) on the chosen row, where the rejected response has a token b_t
  # at t that differs from a_t (the same token is counted once).
  other = torch.gather(chosen["log_probs"], -1, rejected["labels"][..., None])[
    ..., 0
  ]
  distinct = rejected["where"] & (rejected["labels"] != chosen["labels"])
  p_pair = torch.exp(chosen["token"]) + torch.where(
    distinct, torch.exp(other), 0.0
  )
  out["chosen_token_logps"] = chosen["token"]
  out["chosen_token_pair_not_logps"] = torch.where(
    chosen["where"], torch.log1p(-p_pair), 0.0
  )
  out["chosen_where"] = chosen["where"]
  # Pairs that count: a response token, and a weight above 0 (padding rows
  # are copies of real pairs with weight 0).
  weight = np.asarray(
    batch.get("example_weight", np.ones(len(chosen["where"])))
  )
  out["counted"] = chosen["where"].any(-1) & torch.from_numpy(weight > 0)
  return out


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def gradients(model, outputs, cotangents, model_config) -> dict[str, Any]:
  """Gradient of ``sum_k <outputs[k], cotangents[k]>`` w.r.t. our params.

  Args:
    model: from `torch_model`.
    outputs: from `pair_statistics` on ``model``.
    cotangents: numpy arrays keyed like (some of) ``outputs``, same shapes;
      a missing key counts as zero.
    model_config: the `DecoderConfig` the model was built from.

  Returns:
    A nested dict of float64 numpy arrays with the structure and shapes of
    our parameters (stacked blocks if ``model_config.scan_layers``).
  """
  keys = sorted(cotangents)
  named = dict(model.named_parameters())
  grads = torch.autograd.grad(
    [outputs[k] for k in keys],
    list(named.values()),
    grad_outputs=[
      torch.as_tensor(np.asarray(cotangents[k], np.float64)) for k in keys
    ],
    retain_graph=True,
    allow_unused=True,
  )
  grad_of = {
    name: (torch.zeros_like(p) if g is None else g)
    for (name, p), g in zip(named.items(), grads)
  }
  prefix = hf_weights.PREFIXES[model_config.family][0]
  groups = hf_weights.tensor_groups(model_config)
  used = {hf_weights.full_name(n, prefix) for g in groups for n in g.hf_names}
  if set(named) != used:
    raise ValueError(
      f"parameters not mapped: {sorted(set(named) - used)}; "
      f"names not found: {sorted(used - set(named))}"
    )
  tree: dict[str, Any] = {}
  stacks: dict[tuple[str, ...], list[np.ndarray]] = {}
  for group in groups:
    names = [hf_weights.full_name(n, prefix) for n in group.hf_names]
    # A tied head shares the embedding tensor: its grad holds both uses.
    tensors = [grad_of[n].detach().numpy().astype(np.float64) for n in names]
    for path, array in zip(group.param_paths, group.to_params(tensors)):
      if model_config.scan_layers and group.layer is not None:
        stacks.setdefault(hf_weights.stacked_path(path), []).append(array)
      else:
        _set(tree, path, np.asarray(array, np.float64))
  for path, arrays in stacks.items():
    _set(tree, path, np.stack(arrays))
  return tree


# Test inputs: a random tiny Llama and pairs laid out by collate_pairs.
BOS, EOS, PAD = 256, 257, 258
BUCKET = 16


def tiny_config(**changes):
  """The tiny Llama of the byte vocabulary (259 ids) in float32."""
  return models.get_config(
    "llama", "tiny", vocab_size=259, dtype="float32", **changes
  )


def random_params(config, seed=0):
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


def pairs_batch(model):
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
  entries = [
    (TokenizedPair(i, *(np.asarray(x, np.int32) for x in pair)), 1.0)
    for i, pair in enumerate(pairs)
  ]
  # Named arrays: the float64 reference reads them by name.
  return collate_pairs(entries, buckets=(BUCKET,), pad_id=PAD).arrays()
