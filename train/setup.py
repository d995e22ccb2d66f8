"""Everything a run needs before its first step: model, policy, data.

``build_run`` takes a config that :func:`train.validate.validate` has
accepted, and what that returned (the mesh, the loss, the optimizer);
:func:`step_spec` joins them with the model and the policy into the one
:class:`train.step.StepSpec` that the loop, ``train.aot`` and the
benchmarks compile.
"""

import dataclasses
import pathlib
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import jax
import optax

import slpo_jax
from slpo_jax import models
from slpo_jax import sharding
from train import data as data_lib
from train import policy as policy_lib
from train import reference as reference_lib
from train import samples as samples_lib
from train import step as step_lib
from train import task_reference
from train import validate
from train.batch import Batch
from train.data import validation as data_validation
from train.errors import ConfigError
from train.errors import DataError


@dataclasses.dataclass
class Run:
  """The assembled pieces of one training run.

  Attributes:
    config: the validated config.
    spec: what the compiled steps compute.
    schedule: the learning rate by step, for the metrics.
    initial_params: the policy's trainable tree at step 0.
    param_shardings: its shardings.
    reference_params: the policy's frozen tree (the reference, or with LoRA
      the base), None when the step needs none.
    train_iterator: host-local batches, with get/set_state.
    eval_batches: a fresh pass over the held-out batches.
    sample_prompts: the held-out prompts sampled at every evaluation; None
      when ``eval.num_samples`` is 0 or nothing is held out.
    sample_reference: the reference those samples' KL is taken from (kept
      even when the step reads precomputed reference log-probs); None
      without samples.
  """

  config: Any
  spec: step_lib.StepSpec
  schedule: optax.Schedule
  initial_params: Any
  param_shardings: Any
  reference_params: Any
  train_iterator: Any
  eval_batches: Callable[[], Iterator[Batch]]
  sample_prompts: samples_lib.HeldOutPrompts | None = None
  sample_reference: Any = None

  def policy_params(self, params):
    """The policy's parameters from the train state's ``params``."""
    return jax.jit(self.spec.policy.merged)(params, self.reference_params)

  def to_device(self, batch: Batch) -> Batch:
    """Host-local numpy batch -> global arrays sharded over data and fsdp."""
    return sharding.global_batch(batch, self.spec.mesh)


def _layout(config) -> dict:
  return dict(
    dtype=config.model.dtype,
    param_dtype=config.model.param_dtype,
    remat=config.model.remat,
    remat_policy=config.model.remat_policy,
    scan_layers=config.model.scan_layers,
  )


def abstract_model(config, vocab_size: int | None, platform: str | None = None):
  """The policy's model as ``config`` describes it, without weights.

  Args:
    config: the run's config.
    vocab_size: the tokenizer's vocabulary, which a built-in size takes;
      unused (may be None) with a checkpoint, whose ``config.json`` has its
      own.
    platform: the platform the step runs on (``"cpu"``, ``"gpu"``,
      ``"tpu"``); ``model.attention_impl=auto`` becomes that platform's
      kernel for this model and data layout (:func:`attention_kernel`).
      None leaves ``auto`` to be chosen when the step is lowered.
  """
  # Built with the library's ``auto`` first: whether the kernel asked for
  # can run this model is known once its config (perhaps a checkpoint's) is.
  if config.model.checkpoint:
    model, _ = models.load_hf_model(
      config.model.checkpoint, abstract=True, **_layout(config)
    )
  else:
    try:
      model_config = models.get_config(
        config.model.family,
        config.model.size,
        vocab_size=vocab_size,
        **_layout(config),
      )
    except ValueError as error:
      raise ConfigError(str(error)) from None
    model = models.build(model_config)
  tile = int(config.model.get("attention_block", 0))
  if tile:
    model = models.build(model.config.replace(attention_block=tile))
  if platform is None and config.model.attention_impl == "auto":
    return model
  impl, _ = attention_kernel(config, model.config, platform)
  return models.build(model.config.replace(attention_impl=impl))


def shares_prompt(config) -> bool:
  """Whether batches are shared-prompt rows (``data.share_prompt``)."""
  return bool(config.data.packing and config.data.get("share_prompt", False))


def attention_kernel(
  config, model_config, platform: str | None
) -> tuple[str, str]:
  """``(kernel, why)``: the attention ``config`` runs on ``platform``.

  ``auto`` is ``models.choose_attention`` for the model's features and the
  data layout; an explicit kernel that cannot run them is a one-line error.
  """
  features = dict(
    softcap=model_config.attn_logit_softcap is not None,
    window=any(w is not None for w in model_config.layer_windows()),
    packed=bool(config.data.packing),
    branched=shares_prompt(config),
    dtype=model_config.dtype,
  )
  impl = config.model.attention_impl
  if impl == "auto":
    return models.choose_attention(platform, **features)
  reason = models.unsupported_attention(impl, **features)
  if reason:
    raise ConfigError(reason)
  return impl, "set by model.attention_impl"


def head_options(config, model=None) -> slpo_jax.HeadOptions:
  """The loss head ``config.model`` asks for (capped as ``model`` is)."""
  return slpo_jax.HeadOptions(
    fused=config.model.loss_head == "fused",
    # 0 selects the fused head's tuned default for the backend.
    vocab_chunk_size=config.model.vocab_chunk_size or None,
    token_chunk_size=config.model.token_chunk_size or None,
    # Gemma 2 caps its final logits; both heads must apply the same cap.
    logit_softcap=None if model is None else model.config.final_logit_softcap,
  )


def _model_and_params(config, tokenizer, mesh):
  """The policy's model and its initial parameters, placed on the mesh."""
  platform = mesh.devices.flat[0].platform
  model = abstract_model(config, tokenizer.vocab_size, platform)
  shardings = model.shardings(mesh, models.logical_axis_rules())
  if jax.process_index() == 0:
    impl, why = attention_kernel(config, model.config, platform)
    print(f"attention: {impl} ({why})")
  if config.model.checkpoint:
    _, params = models.load_hf_model(
      config.model.checkpoint, shardings=shardings, **_layout(config)
    )
    if model.config.vocab_size < tokenizer.vocab_size:
      raise ConfigError(
        f"the checkpoint's vocabulary ({model.config.vocab_size}) is smaller"
        f" than the tokenizer's ({tokenizer.vocab_size}); use the"
        " checkpoint's own tokenizer.json"
      )
    return model, params, shardings
  params = jax.jit(model.init, out_shardings=shardings)(
    jax.random.key(config.seed)
  )
  return model, params, shardings


def starting_policy(config, workdir: pathlib.Path, tokenizer, mesh):
  """``(model, params, shardings)``: the policy at step 0, on ``mesh``.

  Without ``reference.checkpoint`` these parameters are also the frozen
  reference. On the synthetic task they are the reference fitted to the
  task's base language (read back from ``workdir/reference`` once fitted).
  """
  model, params, shardings = _model_and_params(config, tokenizer, mesh)
  if config.data.source == "synthetic":
    params = jax.device_put(
      task_reference.fitted_reference(config, workdir, model, params),
      shardings,
    )
  return model, params, shardings


def step_spec(
  config, checked: validate.Validated, model, policy
) -> step_lib.StepSpec:
  """The step of ``config``: its model and policy with what validation
  built (mesh, loss, optimizer)."""
  return step_lib.StepSpec(
    model=model,
    optimizer=checked.optimizer,
    loss=checked.loss,
    head=head_options(config, model),
    policy=policy,
    mesh=checked.mesh,
    grad_accum_steps=config.grad_accum_steps,
  )


def _check_train_size(config, num_pairs: int) -> None:
  if num_pairs < config.batch_size and not config.data.allow_repeats:
    raise DataError(
      f"the train split has {num_pairs} pairs, fewer than one batch of"
      f" {config.batch_size}: every batch would repeat pairs; lower"
      " batch_size, or set data.allow_repeats=True"
    )


def _pair_source(split: str, sample_fn, make_pairs) -> dict:
  """``load_dataset``'s keyword for the split's synthetic pairs."""
  if make_pairs is None or sample_fn is None:
    return {"sample_fn": sample_fn}
  return {"pairs": make_pairs(split, sample_fn)}


def build_run(
  config,
  workdir: pathlib.Path,
  checked: validate.Validated,
  *,
  sampler: Callable = task_reference.reference_sampler,
  make_pairs: Callable | None = None,
) -> Run:
  """Build model, policy and data for a config and what validating it
  built (:func:`train.validate.validate`).

  The synthetic task only (experiments that change how its pairs are made):

  Args:
    sampler: builds the pairs' ``sample_fn`` from the starting model, with
      :func:`train.task_reference.reference_sampler`'s signature.
    make_pairs: ``make_pairs(split, sample_fn) -> PreferencePairs``, the
      split's pairs; None ranks two samples by the task's reward.
  """
  mesh = checked.mesh
  workdir.mkdir(parents=True, exist_ok=True)
  tokenizer = data_lib.make_tokenizer(config.data, config.model.checkpoint)
  model, params, shardings = starting_policy(config, workdir, tokenizer, mesh)

  sample_fn = None
  if config.data.source == "synthetic":
    # The pairs are two reference samples ranked by the reward.
    sample_fn = sampler(
      model,
      params,
      max_new_tokens=config.data.synthetic.max_new_tokens,
      seed=config.seed,
    )
  prepared = policy_lib.prepare(config, model, params, shardings, mesh)
  spec = step_spec(config, checked, model, prepared.policy)
  frozen = prepared.frozen

  # Loading validates and tokenizes everything up front: bad data stops the
  # run here, before any training step.
  datasets = {
    split: data_lib.load_dataset(
      config.data,
      tokenizer=tokenizer,
      split=split,
      **_pair_source(split, sample_fn, make_pairs),
      unpaired=checked.loss.unpaired,
    )
    for split in ("train", "eval")
    if split in data_validation.splits(config.data)
  }
  _check_train_size(config, datasets["train"].report.num_loaded)
  # Packed rows split over the host's devices on the batch axes.
  row_multiple = max(
    mesh.shape["data"] * mesh.shape["fsdp"] // jax.process_count(), 1
  )
  if jax.process_index() == 0:
    for dataset in datasets.values():
      dataset.measure_packing(
        config.batch_size // jax.process_count(), row_multiple
      )
      print(dataset.report.summary())
    pairs = config.steps * config.batch_size
    print(
      f"training sees {pairs / datasets['train'].report.num_loaded:.2f}"
      f" epochs of the train split ({config.steps} steps x"
      f" {config.batch_size} {datasets['train'].report.loaded_unit})"
    )

  def batches(split: str, single_pass: bool):
    if split not in datasets:
      return iter(())
    return datasets[split].batches(
      batch_size=config.batch_size // jax.process_count(),
      seed=config.seed,
      shard_index=jax.process_index(),
      shard_count=jax.process_count(),
      repeat=not single_pass,
      row_multiple=row_multiple,
    )

  sample_prompts = samples_lib.held_out_prompts(
    config,
    tokenizer,
    datasets["eval"].pairs if "eval" in datasets else None,
  )
  sample_reference = None
  if sample_prompts is not None:
    sample_reference = prepared.policy.reference(frozen)
  train_iterator = batches("train", single_pass=False)
  eval_batches = lambda: batches("eval", single_pass=True)  # noqa: E731
  if prepared.policy.reference_in_batch:
    cache = reference_lib.ReferenceCache.build(
      workdir,
      config,
      model,
      prepared.policy.reference(frozen),
      batches,
      mesh,
      dataset_fingerprint="/".join(d.fingerprint for d in datasets.values()),
      head=spec.head,
    )
    train_iterator = cache.attach(train_iterator)
    eval_batches = lambda: cache.attach_all(batches("eval", True))  # noqa: E731
    # Only the reference's forward pass is skipped; a LoRA policy still
    # needs its base.
    frozen = prepared.policy.frozen_in_step(frozen)
  return Run(
    config=config,
    spec=spec,
    schedule=checked.schedule,
    initial_params=prepared.trainable,
    param_shardings=prepared.trainable_shardings,
    reference_params=frozen,
    train_iterator=train_iterator,
    eval_batches=eval_batches,
    sample_prompts=sample_prompts,
    sample_reference=sample_reference,
  )
