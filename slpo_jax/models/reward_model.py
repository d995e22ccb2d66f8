"""Reward models: a decoder whose score head reads the last real token.

A Hugging Face ``*ForSequenceClassification`` folder with one label
(``LlamaForSequenceClassification`` and the Qwen2, Qwen3, Gemma, Gemma 2,
Mistral, Phi-3 and GPT-2 equivalents) is the backbone the families load,
plus ``score.weight`` ``[1, d_model]`` with no bias. Its score of a sequence
is that head applied to the final hidden state of the sequence's last real
token (what ``transformers`` pools: the last token that is not padding).
:func:`write_score_head` turns a folder that ``save_hf_checkpoint`` wrote
into such a folder.
"""

import contextlib
import dataclasses
import json
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from slpo_jax.models import hf_io
from slpo_jax.models.hf_config import CheckpointError
from slpo_jax.models.model import DecoderLM

SCORE_TENSOR = "score.weight"
_HEAD_SUFFIX = "ForSequenceClassification"


@dataclasses.dataclass(frozen=True)
class RewardModel:
  """A backbone and a scalar head; parameters ``{"backbone", "score"}``.

  ``score`` is ``[d_model]``.
  """

  backbone: DecoderLM

  def scores(
    self, params: Any, input_ids: jax.Array, attention_mask: jax.Array
  ) -> jax.Array:
    """``[B]`` float32 rewards of ``[B, T]`` sequences (padded either side)."""
    mask = jnp.asarray(attention_mask, jnp.int32)
    hidden, _ = self.backbone.hidden_states(params["backbone"], input_ids, mask)
    width = mask.shape[1]
    last = width - 1 - jnp.argmax(mask[:, ::-1], axis=-1)
    final = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
    return jnp.einsum(
      "bd,d->b",
      final.astype(jnp.float32),
      params["score"].astype(jnp.float32),
      precision=jax.lax.Precision.HIGHEST,
    )


def _hf_config(folder: pathlib.Path) -> dict:
  path = folder / hf_io.CONFIG_FILE
  try:
    hf = json.loads(path.read_text())
  except (OSError, ValueError) as error:
    raise CheckpointError(f"{path}: unreadable: {error}") from None
  if not isinstance(hf, dict):
    raise CheckpointError(f"{path}: expected a JSON object")
  architectures = hf.get("architectures") or []
  if not any(str(a).endswith(_HEAD_SUFFIX) for a in architectures):
    raise CheckpointError(
      f"{path}: architectures {architectures} hold no *{_HEAD_SUFFIX}; a"
      " reward model is a sequence-classification folder (e.g."
      f" LlamaFor{_HEAD_SUFFIX} with num_labels=1)"
    )
  labels = len(hf.get("id2label") or {0: "LABEL_0"})
  if labels != 1:
    raise CheckpointError(
      f"{path}: {labels} labels; a reward model has one (num_labels=1)"
    )
  return hf


def load_hf_reward_model(
  path: hf_io.PathLike, **options: Any
) -> tuple[RewardModel, dict]:
  """Loads a one-label ``*ForSequenceClassification`` folder.

  Args:
    path: the folder (``config.json`` and safetensors weights).
    **options: ``load_hf_model``'s layout options (``dtype``,
      ``param_dtype``, ``shardings``, ``scan_layers``, ...); the head is
      replicated.

  Returns:
    ``(model, params)``.

  Raises:
    CheckpointError: not a one-label sequence-classification folder, or a
      tensor the model cannot use.
  """
  folder = pathlib.Path(path)
  if not folder.is_dir():
    raise CheckpointError(f"{folder}: not a checkpoint folder")
  _hf_config(folder)
  backbone, params = hf_io.load_hf_model(folder, backbone_only=True, **options)
  d_model = backbone.config.d_model
  with contextlib.ExitStack() as stack:
    reader = hf_io.TensorReader(folder, stack)
    score = reader.read(SCORE_TENSOR, (1, d_model))
  param_dtype = options.get("param_dtype", "float32")
  score = jnp.asarray(np.asarray(score, np.float32)[0], param_dtype)
  return RewardModel(backbone), {"backbone": params, "score": score}


# The causal-LM class of each exported family -> its classifier's.
_CLASSIFIER_SUFFIXES = (
  ("ForCausalLM", _HEAD_SUFFIX),
  ("LMHeadModel", _HEAD_SUFFIX),
)


def write_score_head(
  path: hf_io.PathLike, score: Any, *, pad_token_id: int | None = None
) -> None:
  """Makes a causal-LM folder a one-label sequence-classification folder.

  ``config.json`` names the ``*ForSequenceClassification`` class, one label
  and the padding id (which ``transformers`` pools by); ``score.weight``
  ``[1, d_model]`` joins the weights and the unused ``lm_head.weight``
  leaves them (a sharded folder keeps it, and gains a file for the head).

  Args:
    path: a folder written by ``save_hf_checkpoint``.
    score: ``[d_model]`` head weights.
    pad_token_id: written when given.
  """
  folder = pathlib.Path(path)
  config_path = folder / hf_io.CONFIG_FILE
  hf = json.loads(config_path.read_text())
  names = []
  for name in hf.get("architectures") or []:
    for old, new in _CLASSIFIER_SUFFIXES:
      if name.endswith(old):
        name = name[: -len(old)] + new
    names.append(name)
  hf["architectures"] = names
  hf["id2label"] = {"0": "LABEL_0"}
  hf["label2id"] = {"LABEL_0": 0}
  if pad_token_id is not None:
    hf["pad_token_id"] = int(pad_token_id)
  config_path.write_text(json.dumps(hf, indent=2) + "\n")
  metadata = {"format": "pt"}
  single = folder / hf_io.WEIGHTS_FILE
  if single.is_file():
    tensors = load_file(str(single))
    tensors.pop("lm_head.weight", None)
    dtype = next(iter(tensors.values())).dtype
    tensors[SCORE_TENSOR] = np.asarray(score, dtype)[None]
    save_file(tensors, str(single), metadata=metadata)
    return
  index_path = folder / hf_io.INDEX_FILE
  index = json.loads(index_path.read_text())
  file = "model-score.safetensors"
  save_file(
    {SCORE_TENSOR: np.asarray(score, np.float32)[None]},
    str(folder / file),
    metadata=metadata,
  )
  index["weight_map"][SCORE_TENSOR] = file
  index_path.write_text(json.dumps(index, indent=2) + "\n")


def save_hf_reward_model(
  model: RewardModel, params: dict, path: hf_io.PathLike, **options: Any
) -> None:
  """Writes a folder that ``AutoModelForSequenceClassification`` loads.

  ``options`` are ``save_hf_checkpoint``'s (``dtype``, ``max_shard_size``)
  and ``pad_token_id``.
  """
  pad_token_id = options.pop("pad_token_id", None)
  hf_io.save_hf_checkpoint(model.backbone, params["backbone"], path, **options)
  write_score_head(
    path, jax.device_get(params["score"]), pad_token_id=pad_token_id
  )
