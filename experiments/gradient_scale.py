"""Gradient scale: how hard each loss pushes at the reference, by length.

At the start of preference training the policy equals the reference. This
experiment takes one pair of responses of length T under a random model whose
per-token probability of each observed token lies in [0.3, 0.7] (so
log pi(y) is about -0.72 T), and measures the norm of the gradient of each
loss with respect to the teacher-forced logits, for T = 1..256, in float32
and float64.

For hard SLPO (Eq. 8) the derivative with respect to log pi(y_w) is
(pi(y_w) - w) / (1 - pi(y_w)) = -pi(y_l) / (1 - pi(y_w)) at the reference,
and with respect to log pi(y_l) it is pi(y_l) / (1 - pi(y_l)): the gradient
scales with a sequence probability. The float64 evaluation of that formula,
from the library's own ``d log pi`` gradients, is written beside the measured
norms as the loss ``slpo (formula)``.

y_w and y_l differ from their first token on and share the first position's
logits (the same prompt); every later position has its own logits, as the
two responses' contexts differ there. Lengths are handled by masking one
[256, V] array, and the log-probability half of every gradient compiles once
per dtype (see :class:`Pullback`).

Run::

  python -m experiments.gradient_scale [--out docs/figures]
"""

import argparse
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

import slpo_jax
from experiments import objectives
from experiments import stats

MAX_LENGTH = 256
VOCAB = 16
LENGTHS = tuple(range(1, 17)) + tuple(range(20, MAX_LENGTH + 1, 4))
LENGTH_SCALED = "slpo_tempered t=T"


def _row_logits(rng, labels, label_probs, vocab):
  """Log-probabilities with ``p[t, labels[t]] = label_probs[t]`` exactly.

  The remaining mass is spread over the other tokens by a random softmax.
  """
  others = np.exp(rng.normal(size=(len(labels), vocab)))
  others[np.arange(len(labels)), labels] = 0.0
  probs = (
    others / others.sum(axis=1, keepdims=True) * (1.0 - label_probs)[:, None]
  )
  probs[np.arange(len(labels)), labels] = label_probs
  return np.log(probs)


def make_pair(seed: int = 0, max_length: int = MAX_LENGTH, vocab: int = VOCAB):
  """A random reference model's logits on one pair, in float64.

  Returns:
    ``(chosen_logits, rejected_logits, chosen_labels, rejected_labels)`` with
    logits ``[max_length, vocab]`` (normalised log-probabilities) and labels
    ``[max_length]``; the rejected row's first position repeats the chosen
    row's. The two labels differ at every position.
  """
  rng = np.random.default_rng(seed)
  chosen_labels = rng.integers(0, vocab, size=max_length)
  shift = rng.integers(1, vocab, size=max_length)
  rejected_labels = (chosen_labels + shift) % vocab
  chosen_logits = _row_logits(
    rng, chosen_labels, rng.uniform(0.3, 0.7, size=max_length), vocab
  )
  rejected_logits = _row_logits(
    rng, rejected_labels, rng.uniform(0.3, 0.7, size=max_length), vocab
  )
  # Position 0 is one distribution over both first tokens: 0.45 on y_w's,
  # 0.35 on y_l's, 0.2 on the rest.
  first = np.exp(rng.normal(size=vocab))
  first[[chosen_labels[0], rejected_labels[0]]] = 0.0
  first = first / first.sum() * 0.2
  first[chosen_labels[0]] = 0.45
  first[rejected_labels[0]] = 0.35
  chosen_logits[0] = rejected_logits[0] = np.log(first)
  return chosen_logits, rejected_logits, chosen_labels, rejected_labels


def _masks(lengths, max_length):
  return np.arange(max_length)[None, :] < np.asarray(lengths)[:, None]


# Counts and masks are data, not functions of the logits: gradients are taken
# with respect to the other statistics only.
_DATA_FIELDS = (
  "chosen_lengths",
  "rejected_lengths",
  "chosen_where",
  "counted",
  "chosen_top1_tokens",
)


def _values(terms):
  """The statistics that depend on the logits (data fields set to None)."""
  return terms._replace(**{name: None for name in _DATA_FIELDS})


def _data(terms) -> dict:
  return {name: getattr(terms, name) for name in _DATA_FIELDS}


def _terms(params, batch):
  # The first position is the shared prompt context: y_l reads y_w's logits.
  rejected = params["rejected"].at[0].set(params["chosen"][0])
  return objectives.pair_terms(params["chosen"], rejected, batch)


class Pullback:
  """Gradients of any loss at policy == reference, for many lengths at once.

  ``jax.grad`` of a loss is the vector-Jacobian product of the library's
  :func:`objectives.pair_terms` with the loss's derivative with respect to
  those terms; this class splits the two so that the expensive half (log-probs
  and complements over ``[256, V]`` logits) compiles once per dtype, and each
  loss adds only a compile of its scalar part. The operations are those
  ``jax.grad`` of the composed function would run.

  Args:
    pair: the output of :func:`make_pair`.
    lengths: response lengths T (both responses have length T).
    dtype: ``jnp.float32`` or ``jnp.float64`` (the latter needs x64 on).
  """

  def __init__(self, pair, lengths, dtype):
    chosen_logits, rejected_logits, chosen_labels, rejected_labels = pair
    self.lengths = list(lengths)
    self.params = {
      "chosen": jnp.asarray(chosen_logits, dtype),
      "rejected": jnp.asarray(rejected_logits, dtype),
    }
    self.masks = jnp.asarray(_masks(lengths, len(chosen_labels)))
    labels = (jnp.asarray(chosen_labels), jnp.asarray(rejected_labels))

    def batch(where):
      return objectives.PairBatch(labels[0], where, labels[1], where)

    self._batch = batch

    def terms_at(params, where):
      return _terms(params, batch(where))

    def pull(params, where, cotangent):
      _, vjp = jax.vjp(lambda params: _values(terms_at(params, where)), params)
      return vjp(cotangent)[0]

    self.terms = jax.jit(jax.vmap(terms_at, in_axes=(None, 0)))(
      self.params, self.masks
    )
    self._pull = jax.jit(jax.vmap(pull, in_axes=(None, 0, 0)))

  def _loss_of_terms(self, objective):
    def loss(values, data):
      terms = values._replace(**data)
      reference = jax.tree.map(jax.lax.stop_gradient, terms)
      return objectives.mean_loss(objective, terms, reference)

    return loss

  def cotangents(self, objective):
    """``dL / d terms`` for every length, as stacked :class:`PairStats`."""
    grad = jax.vmap(jax.grad(self._loss_of_terms(objective)))
    return jax.jit(grad)(_values(self.terms), _data(self.terms))

  def cotangent_at(self, objective, index):
    """``dL / d terms`` at one length (eager: the loss is a few scalars)."""
    terms = jax.tree.map(lambda x: x[index], self.terms)
    return jax.grad(self._loss_of_terms(objective))(
      _values(terms), _data(terms)
    )

  def gradients(self, cotangents) -> np.ndarray:
    """``[lengths, 2 * max_length * vocab]`` float64 gradient w.r.t. logits."""
    grads = self._pull(self.params, self.masks, cotangents)
    flat = np.concatenate(
      [np.asarray(grads["chosen"]), np.asarray(grads["rejected"])], axis=-1
    )
    return flat.reshape(len(self.lengths), -1).astype(np.float64)


def gradients(objective, pullback: Pullback) -> np.ndarray:
  """Gradient of ``objective`` w.r.t. both rows of logits, one row per length."""
  return pullback.gradients(pullback.cotangents(objective))


def length_scaled_gradients(pullback: Pullback) -> np.ndarray:
  """Tempered SLPO with temperature t = T, the response length.

  A documented variant, not Eq. 8. The library takes t as a Python float, so
  the loss's scalar part runs once per length.
  """
  parts = [
    pullback.cotangent_at(objectives.slpo(float(length)), index)
    for index, length in enumerate(pullback.lengths)
  ]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
  return pullback.gradients(stacked)


def slpo_formula(pullback: Pullback):
  """Hard SLPO's gradient from the closed form (use a float64 ``pullback``).

  ``-pi(y_l) / (1 - pi(y_w)) * d log pi(y_w) + pi(y_l) / (1 - pi(y_l)) *
  d log pi(y_l)``, with the ``d log pi`` from :func:`slpo_jax.sequence_logps`.

  Returns:
    ``(gradients [lengths, 2 * max_length * vocab], log_pi_w, log_pi_l)``.
  """
  log_w = pullback.terms.chosen_logps
  log_l = pullback.terms.rejected_logps
  log1mexp = slpo_jax.losses.log1mexp
  cotangent = jax.tree.map(jnp.zeros_like, _values(pullback.terms))._replace(
    chosen_logps=-jnp.exp(log_l - log1mexp(log_w)),
    rejected_logps=jnp.exp(log_l - log1mexp(log_l)),
  )
  return (
    pullback.gradients(cotangent),
    np.asarray(log_w, np.float64),
    np.asarray(log_l, np.float64),
  )


def norm(grads: np.ndarray) -> np.ndarray:
  """Euclidean norm per row, scaled first so 1e-200 squared does not vanish."""
  scale = np.max(np.abs(grads), axis=-1, keepdims=True)
  safe = np.where(scale > 0, scale, 1.0)
  return np.squeeze(scale, -1) * np.sqrt(np.sum((grads / safe) ** 2, axis=-1))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Row-wise cosine similarity, NaN where either row is exactly zero."""
  na, nb = norm(a), norm(b)
  ok = (na > 0) & (nb > 0)
  scale_a = np.where(ok, na, 1.0)[:, None]
  scale_b = np.where(ok, nb, 1.0)[:, None]
  return np.where(ok, np.sum((a / scale_a) * (b / scale_b), axis=-1), np.nan)


def default_objectives():
  return [
    objectives.dpo(0.1),
    objectives.ipo(0.1),
    objectives.slpo(),
    objectives.slpo(2.0),
    objectives.slpo(4.0),
    objectives.slpo(8.0),
    objectives.slpo_soft(0.9),
    objectives.slpo_token(),
  ]


def run(lengths=LENGTHS, grid=None, seed: int = 0, length_scaled: bool = True):
  """Gradient norms of every loss, length and dtype.

  Returns:
    ``(rows, summary)``: long-format rows (length, loss, dtype, grad_norm,
    cosine_to_float64, log_pi_w, log_pi_l) and per-(loss, dtype) facts: the
    first length with an exactly zero gradient and the first length whose
    float32 gradient points away from the float64 one (cosine < 0.9).
  """
  grid = default_objectives() if grid is None else grid
  pair = make_pair(seed)
  results = {}
  with jax.enable_x64(True):
    for dtype in (jnp.float32, jnp.float64):
      name = jnp.dtype(dtype).name
      pullback = Pullback(pair, lengths, dtype)
      for objective in grid:
        results[(objective.label, name)] = gradients(objective, pullback)
      if length_scaled:
        results[(LENGTH_SCALED, name)] = length_scaled_gradients(pullback)
    formula, log_w, log_l = slpo_formula(pullback)
  labels = list(dict.fromkeys(label for label, _ in results))
  rows, summary = [], []
  for label in labels:
    for dtype in ("float32", "float64"):
      grads = results[(label, dtype)]
      norms = norm(grads)
      agreement = cosine(grads, results[(label, "float64")])
      for index, length in enumerate(lengths):
        rows.append(
          {
            "length": int(length),
            "loss": label,
            "dtype": dtype,
            "grad_norm": float(norms[index]),
            "cosine_to_float64": float(agreement[index]),
            "log_pi_w": float(log_w[index]),
            "log_pi_l": float(log_l[index]),
          }
        )
      zero = [length for length, value in zip(lengths, norms) if value == 0]
      astray = [
        length for length, value in zip(lengths, agreement) if not value >= 0.9
      ]
      summary.append(
        {
          "loss": label,
          "dtype": dtype,
          "first_zero_length": zero[0] if zero else "",
          "first_astray_length": astray[0] if astray else "",
          "norm_T1": float(norms[0]),
          "norm_T64": float(
            norms[list(lengths).index(64)] if 64 in lengths else np.nan
          ),
          "norm_T256": float(norms[-1]),
        }
      )
  formula_norms = norm(formula)
  for index, length in enumerate(lengths):
    rows.append(
      {
        "length": int(length),
        "loss": "slpo (formula)",
        "dtype": "float64",
        "grad_norm": float(formula_norms[index]),
        "cosine_to_float64": float(
          cosine(
            formula[index : index + 1],
            results[("slpo", "float64")][index : index + 1],
          )[0]
        ),
        "log_pi_w": float(log_w[index]),
        "log_pi_l": float(log_l[index]),
      }
    )
  return rows, summary


def plot(rows, path: pathlib.Path) -> None:
  """Gradient norm against length, log y, one panel per dtype."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  floor = 1e-90  # Exact zeros are drawn here, on the bottom edge.
  labels = list(dict.fromkeys(row["loss"] for row in rows))
  fig, axes = plt.subplots(1, 2, sharey=True, figsize=(12, 5))
  for ax, dtype in zip(axes, ("float32", "float64")):
    for number, label in enumerate(labels):
      chosen = [
        row
        for row in rows
        if row["loss"] == label
        and (row["dtype"] == dtype or label == "slpo (formula)")
      ]
      lengths = np.array([row["length"] for row in chosen])
      values = np.array([row["grad_norm"] for row in chosen])
      if label == "slpo (formula)":
        style = dict(color="black", linestyle=":", linewidth=1.5)
      else:
        style = dict(
          color=f"C{number % 10}", linewidth=2.5 if label == "slpo" else 1.3
        )
      ax.plot(lengths, np.maximum(values, floor), label=label, **style)
      zeros = values == 0
      if zeros.any():
        ax.scatter(
          lengths[zeros],
          np.full(zeros.sum(), floor),
          marker="x",
          s=14,
          color=style["color"],
          zorder=3,
        )
    ax.axhline(1e-8, color="gray", linestyle="--", linewidth=0.8)
    ax.text(1.1, 3e-8, "Adam eps = 1e-8", fontsize=7, color="gray")
    if dtype == "float32":
      ax.axhline(
        np.finfo(np.float32).tiny, color="gray", linestyle="--", linewidth=0.8
      )
      ax.text(1.1, 3e-38, "smallest normal float32", fontsize=7, color="gray")
    ax.set_yscale("log")
    ax.set_xscale("log", base=2)
    ax.set_ylim(floor / 100, 1e4)
    ax.set_xlabel("response length T (tokens)")
    ax.set_title(f"{dtype}  (x on the bottom edge: exactly 0)", fontsize=10)
    ax.grid(alpha=0.3)
  axes[0].set_ylabel("||dL/d logits|| at policy = reference")
  axes[1].legend(fontsize=7, loc="lower left")
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument(
    "--out", type=pathlib.Path, default=pathlib.Path("docs/figures")
  )
  args = parser.parse_args(argv)
  start = time.perf_counter()
  rows, summary = run()
  stats.write_csv(args.out / "gradient_scale.csv", rows)
  stats.write_csv(args.out / "gradient_scale_summary.csv", summary)
  plot(rows, args.out / "gradient_scale.png")
  for entry in summary:
    print(
      f"{entry['loss']:20s} {entry['dtype']}: |g|(T=1)={entry['norm_T1']:.3g}"
      f" |g|(T=64)={entry['norm_T64']:.3g}"
      f" |g|(T=256)={entry['norm_T256']:.3g}"
      f" first zero at T={entry['first_zero_length'] or '-'},"
      f" first cos<0.9 vs float64 at T="
      f"{entry['first_astray_length'] or '-'}"
    )
  print(f"gradient_scale: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
  main()
