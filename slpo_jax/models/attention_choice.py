"""Which attention kernel runs where, and which cannot run a model.

=============  ==============================================================
attention_impl  kernel
=============  ==============================================================
auto           chosen per platform by :func:`choose` (the default)
blockwise      flash attention in plain JAX (``blockwise_attention``): every
               mask feature, any platform
dense          the whole score matrix (the reference; short rows only)
splash         Pallas splash attention, TPU (interpreted elsewhere): every
               mask feature
cudnn          cuDNN's fused kernel through ``jax.nn.dot_product_attention``
               (NVIDIA GPU): causal, sliding window; right-padded unpacked
               rows only (no segment ids), no logit soft-capping
pallas_gpu     the Pallas Triton flash kernel (GPU, interpreted elsewhere):
               causal and segment ids; no window, no soft-capping
=============  ==============================================================

An explicit choice a model or layout cannot use is an error
(:func:`unsupported`), never a silent fallback to another kernel.

Branched rows (``data.share_prompt``: a prompt, then two responses that see
the prompt but not each other) run on blockwise or dense only. The fused
kernels mask by segment equality and row order: splash's and the Pallas GPU
kernel's segment ids give each key one segment, so a prompt key cannot be
in both responses' segments, and a rejected token comes after the chosen
ones in the row, so causal order by row index lets it see them; cuDNN takes
no segments at all. ``auto`` therefore means blockwise for branched rows
on every platform.
"""

from __future__ import annotations

ATTENTION_IMPLS = (
  "auto",
  "blockwise",
  "dense",
  "splash",
  "cudnn",
  "pallas_gpu",
)
_GPU_PLATFORMS = ("gpu", "cuda")


def unsupported(
  impl: str,
  *,
  softcap: bool,
  window: bool,
  packed: bool = False,
  branched: bool = False,
  dtype: str | None = None,
) -> str | None:
  """Why kernel ``impl`` cannot run attention with these features, or None.

  Args:
    impl: one of ``ATTENTION_IMPLS``.
    softcap: the model caps attention logits (Gemma 2).
    window: some layer has a sliding window.
    packed: rows hold several sequences (segment ids beyond padding).
    branched: rows fork after a shared prompt (``data.share_prompt``).
    dtype: the compute dtype's name, if known (cuDNN's fused kernel takes
      bfloat16 and float16 only).
  """
  if branched and impl in ("splash", "cudnn", "pallas_gpu"):
    return (
      f"attention_impl={impl} cannot mask shared-prompt rows (its segment"
      " ids and row order cannot keep the two responses apart); use"
      " blockwise or auto"
    )
  if impl == "cudnn" and softcap:
    return (
      "attention_impl=cudnn cannot cap attention logits "
      "(jax.nn.dot_product_attention has no soft-capping); use splash on "
      "TPU or blockwise"
    )
  if impl == "cudnn" and packed:
    return (
      "attention_impl=cudnn takes no segment ids, so it cannot attend "
      "within packed rows; use pallas_gpu or blockwise"
    )
  if impl == "cudnn" and dtype not in (None, "bfloat16", "float16"):
    return (
      f"attention_impl=cudnn needs bfloat16 or float16 compute, not {dtype}"
      " (model.dtype); use pallas_gpu or blockwise"
    )
  if impl == "pallas_gpu" and (softcap or window):
    feature = "logit soft-capping" if softcap else "sliding window"
    return (
      f"attention_impl=pallas_gpu has no {feature} (the Pallas GPU kernel "
      "masks causally by segment only); use blockwise"
    )
  return None


def choose(
  platform: str,
  *,
  softcap: bool,
  window: bool,
  packed: bool,
  branched: bool = False,
  dtype: str | None = None,
) -> tuple[str, str]:
  """The kernel ``auto`` stands for on ``platform``, and why.

  Args:
    platform: ``"tpu"``, ``"gpu"`` (or ``"cuda"``), ``"cpu"``.
    softcap: the model caps attention logits.
    window: some layer has a sliding window.
    packed: rows hold several sequences.
    branched: rows fork after a shared prompt.
    dtype: the compute dtype's name, if known.

  Returns:
    ``(impl, reason)``.
  """
  if branched:
    return "blockwise", (
      "shared-prompt rows: only blockwise (or dense) keeps the responses apart"
    )
  if platform == "tpu":
    return "splash", "TPU: the splash kernel takes every mask feature"
  if platform not in _GPU_PLATFORMS:
    return "blockwise", f"{platform}: no fused attention kernel"
  features = dict(softcap=softcap, window=window, packed=packed, dtype=dtype)
  if unsupported("cudnn", **features) is None:
    return "cudnn", "GPU, unpacked rows: cuDNN's fused kernel"
  rows = "packed rows" if packed else f"{dtype} compute"
  if unsupported("pallas_gpu", **features) is None:
    return "pallas_gpu", f"GPU, {rows}: the Pallas GPU kernel, not cuDNN"
  return "blockwise", (
    "GPU: neither cuDNN nor the Pallas GPU kernel takes "
    + ("logit soft-capping" if softcap else f"a sliding window with {rows}")
  )
