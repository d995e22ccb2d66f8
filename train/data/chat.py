"""Conversations: chat-message records and the chat templates that render them.

Two record layouts hold conversations, as in TRL:

* explicit prompt: ``prompt`` is a list of ``{"role", "content"}`` messages
  (system turns and earlier user/assistant turns included), ``chosen`` and
  ``rejected`` are lists holding the assistant turn(s) that follow;
* implicit prompt: no prompt field; ``chosen`` and ``rejected`` are whole
  conversations. The prompt is their longest common run of messages, which
  must leave each side starting with an assistant turn.

A pair is rendered as ``transformers``' ``apply_chat_template`` renders it:
the prompt with the generation prompt, and each response as the text the
template adds after it when the conversation goes on with that response.
Special tokens come only from the template (its ``{{ bos_token }}``, its
end-of-turn markers), so none is doubled; ``encode`` adds no special tokens.

The Jinja environment matches ``transformers``: sandboxed and immutable,
``trim_blocks`` and ``lstrip_blocks``, the loop-controls extension, the
globals ``raise_exception``, ``strftime_now``, ``namespace`` and ``dict``, a
``tojson`` that does not escape HTML, and the tokenizer's special tokens
(``bos_token``, ``eos_token``, ...) as variables.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import pathlib
from collections.abc import Mapping
from collections.abc import Sequence

from train.data.report import DataError

# Templates for tokenizers that ship none, by name (``data.chat_template``).
BUILTIN_TEMPLATES = {
  # ChatML (Qwen, many fine-tunes): no BOS; a turn ends with <|im_end|>.
  "chatml": (
    r"{% for message in messages %}"
    r"{{ '<|im_start|>' + message['role'] + '\n' + message['content']"
    r" + '<|im_end|>\n' }}"
    r"{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
  ),
  # Llama 3: one BOS, role headers, contents trimmed, turns end with <|eot_id|>.
  "llama3": (
    r"{{ bos_token }}"
    r"{% for message in messages %}"
    r"{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    r" + message['content'] | trim + '<|eot_id|>' }}"
    r"{% endfor %}"
    r"{% if add_generation_prompt %}"
    r"{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    r"{% endif %}"
  ),
  # Gemma: one BOS, the assistant is 'model', a system message is folded
  # into the first user turn, and turns must alternate starting with the user.
  "gemma": (
    r"{{ bos_token }}"
    r"{% if messages[0]['role'] == 'system' %}"
    r"{% set system = messages[0]['content'] | trim + '\n\n' %}"
    r"{% set turns = messages[1:] %}"
    r"{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    r"{% for message in turns %}"
    r"{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    r"{{ raise_exception('Gemma turns must alternate user/assistant,"
    r" starting with the user') }}"
    r"{% endif %}"
    r"{% set role = 'model' if message['role'] == 'assistant'"
    r" else message['role'] %}"
    r"{{ '<start_of_turn>' + role + '\n' + (system if loop.first else '')"
    r" + message['content'] | trim + '<end_of_turn>\n' }}"
    r"{% endfor %}"
    r"{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
  ),
}

# The special-token variables transformers passes to a template.
_SPECIAL_TOKEN_KEYS = (
  "bos_token",
  "eos_token",
  "unk_token",
  "sep_token",
  "pad_token",
  "cls_token",
  "mask_token",
)
_TEMPLATE_FILE = "chat_template.jinja"
_TOKENIZER_CONFIG = "tokenizer_config.json"
_SPECIAL_TOKENS_MAP = "special_tokens_map.json"


class BadConversation(Exception):
  """A record's messages cannot form a pair; ``reason`` names why."""

  def __init__(self, reason: str, detail: str = ""):
    super().__init__(reason, detail)
    self.reason = reason
    self.detail = detail


Messages = tuple[Mapping[str, object], ...]


@dataclasses.dataclass(frozen=True)
class ChatPair:
  """One validated conversational pair: messages, not yet rendered.

  Attributes mirror ``sources.TextPair``; ``chosen`` and ``rejected`` are
  the messages that follow ``prompt``, the first of each an assistant turn.
  """

  example_id: int
  prompt: Messages
  chosen: Messages
  rejected: Messages
  location: str


def is_conversation(value: object) -> bool:
  """Whether a record field holds messages (a list) rather than text."""
  return isinstance(value, (list, tuple))


def check_messages(value: object, field: str) -> Messages:
  """The messages of a record field, each a mapping with string role/content.

  Raises:
    BadConversation: 'bad_messages' naming the first bad message.
  """
  if not is_conversation(value):
    raise BadConversation(
      "bad_messages",
      f"field {field!r} is {type(value).__name__}, not a list of messages",
    )
  for index, message in enumerate(value):
    where = f"field {field!r} message {index}"
    if not isinstance(message, Mapping):
      raise BadConversation("bad_messages", f"{where} is not an object")
    for key in ("role", "content"):
      if not isinstance(message.get(key), str):
        raise BadConversation("bad_messages", f"{where} has no string {key!r}")
    try:
      message["content"].encode("utf-8")
    except UnicodeEncodeError as e:
      raise BadConversation("bad_messages", f"{where}: {e.reason}") from None
  return tuple(value)


def _check_responses(chosen: Messages, rejected: Messages) -> None:
  for side, messages in (("chosen", chosen), ("rejected", rejected)):
    if not messages or messages[0]["role"] != "assistant":
      raise BadConversation(
        "no_assistant_turn",
        f"the {side} messages do not start with an assistant turn",
      )
    if not any(m["content"].strip() for m in messages):
      raise BadConversation("empty_response", f"the {side} response is empty")
  if chosen == rejected:
    raise BadConversation("identical_responses")


def split_conversations(
  prompt: Messages | None, chosen: Messages, rejected: Messages
) -> tuple[Messages, Messages, Messages]:
  """(prompt, chosen, rejected) messages of an explicit or implicit record.

  With ``prompt`` None, the prompt is the longest shared run of messages.

  Raises:
    BadConversation: responses that do not start with an assistant turn,
      are empty, or are the same.
  """
  if chosen == rejected:
    raise BadConversation("identical_responses")
  if prompt is None:
    shared = 0
    for mine, theirs in zip(chosen, rejected):
      if mine != theirs:
        break
      shared += 1
    prompt, chosen, rejected = (
      chosen[:shared],
      chosen[shared:],
      rejected[shared:],
    )
  _check_responses(chosen, rejected)
  return prompt, chosen, rejected


@functools.lru_cache(maxsize=16)
def _compile(text: str):
  """The template compiled in transformers' Jinja environment."""
  import jinja2
  from jinja2 import ext
  from jinja2 import sandbox

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(value, ensure_ascii=False, indent=None, separators=None,
             sort_keys=False):  # fmt: skip
    return json.dumps(
      value,
      ensure_ascii=ensure_ascii,
      indent=indent,
      separators=separators,
      sort_keys=sort_keys,
    )

  def strftime_now(spec):
    return datetime.datetime.now().strftime(spec)

  environment = sandbox.ImmutableSandboxedEnvironment(
    trim_blocks=True, lstrip_blocks=True, extensions=[ext.loopcontrols]
  )
  environment.filters["tojson"] = tojson
  environment.globals["raise_exception"] = raise_exception
  environment.globals["strftime_now"] = strftime_now
  environment.globals["dict"] = dict
  environment.globals["namespace"] = jinja2.utils.Namespace
  return environment.from_string(text)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """A chat template with the special tokens it sees.

  Attributes:
    text: the Jinja source.
    special_tokens: ``bos_token``, ``eos_token``, ... as strings.
    source: where the template came from, for messages.
  """

  text: str
  special_tokens: Mapping[str, str]
  source: str

  def render(
    self, messages: Sequence[Mapping], *, add_generation_prompt: bool = False
  ) -> str:
    """The conversation as text, as ``apply_chat_template(tokenize=False)``.

    Raises:
      BadConversation: 'template_error' when the template refuses the
        messages (its ``raise_exception``, or an error while rendering).
    """
    import jinja2

    try:
      return _compile(self.text).render(
        messages=[dict(m) for m in messages],
        tools=None,
        documents=None,
        add_generation_prompt=add_generation_prompt,
        **self.special_tokens,
      )
    except jinja2.exceptions.TemplateError as e:
      raise BadConversation("template_error", str(e)) from None
    except (TypeError, KeyError, IndexError, ValueError) as e:
      raise BadConversation(
        "template_error", f"{type(e).__name__}: {e}"
      ) from None

  def render_pair(
    self, prompt: Messages, response: Messages
  ) -> tuple[str, str]:
    """(prompt text with the generation prompt, the response's continuation).

    Raises:
      BadConversation: 'template_error', or 'template_prefix' when the
        conversation with the response does not start with the prompt's
        rendering (the template renders earlier turns differently).
    """
    prompt_text = self.render(prompt, add_generation_prompt=True)
    whole = self.render((*prompt, *response))
    if not whole.startswith(prompt_text):
      raise BadConversation(
        "template_prefix",
        "the conversation rendered with its response does not start with"
        " the prompt rendered with the generation prompt",
      )
    return prompt_text, whole[len(prompt_text) :]

  @functools.cached_property
  def end_of_turn(self) -> str | None:
    """The marker the template puts after an assistant turn, e.g.
    '<|im_end|>'; None when it puts nothing there.
    """
    probe = "\x00probe\x00"
    try:
      text = self.render(
        [
          {"role": "user", "content": "hello"},
          {"role": "assistant", "content": probe},
        ]
      )
    except BadConversation:
      return None
    after = text[text.rfind(probe) + len(probe) :].strip()
    return after or None


def _read_json(path: pathlib.Path) -> dict:
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except (OSError, ValueError) as e:
    raise DataError(f"{path}: cannot read: {e}") from None
  return value if isinstance(value, dict) else {}


def _token_text(value: object) -> str | None:
  if isinstance(value, dict):  # {"content": "<s>", "lstrip": false, ...}
    value = value.get("content")
  return value if isinstance(value, str) else None


def special_tokens(folder: pathlib.Path | None) -> dict[str, str]:
  """The special-token strings of a tokenizer folder, as transformers reads
  them: tokenizer_config.json over special_tokens_map.json.
  """
  found: dict[str, str] = {}
  if folder is None:
    return found
  for name in (_SPECIAL_TOKENS_MAP, _TOKENIZER_CONFIG):
    if (folder / name).is_file():
      config = _read_json(folder / name)
      for key in _SPECIAL_TOKEN_KEYS:
        text = _token_text(config.get(key))
        if text is not None:
          found[key] = text
  return found


def _folder_template(folder: pathlib.Path) -> tuple[str, str] | None:
  """(template, where) saved with a tokenizer folder, or None."""
  if (folder / _TEMPLATE_FILE).is_file():
    path = folder / _TEMPLATE_FILE
    return path.read_text(encoding="utf-8"), str(path)
  path = folder / _TOKENIZER_CONFIG
  if not path.is_file():
    return None
  template = _read_json(path).get("chat_template")
  if isinstance(template, list):  # Named templates: [{"name", "template"}].
    named = {t.get("name"): t.get("template") for t in template}
    template = named.get("default")
  return (template, str(path)) if isinstance(template, str) else None


def tokenizer_folder(
  spec: str, model_checkpoint: str = ""
) -> pathlib.Path | None:
  """The folder of the tokenizer ``data.tokenizer`` names, if it has one."""
  spec = spec or model_checkpoint
  if not spec or spec == "bytes":
    return None
  path = pathlib.Path(spec)
  return path if path.is_dir() else path.parent


def load_chat_template(
  data_config, model_checkpoint: str = "", tokenizer=None
) -> ChatTemplate | None:
  """The run's chat template: ``data.chat_template``, else the tokenizer's.

  Args:
    data_config: the data config; ``chat_template`` is '' (the tokenizer
      folder's own: ``chat_template.jinja`` or ``tokenizer_config.json``'s
      ``chat_template``), a name of ``BUILTIN_TEMPLATES``, or a file path.
    model_checkpoint: the model folder, where ``data.tokenizer`` is ''.
    tokenizer: the loaded tokenizer; its ``path`` (when it has one) locates
      the folder instead of the two above.

  Returns:
    None when neither names a template.

  Raises:
    DataError: a missing template file, or a template that does not compile.
  """
  path = getattr(tokenizer, "path", "")
  folder = (
    pathlib.Path(path).parent
    if path
    else tokenizer_folder(data_config.tokenizer, model_checkpoint)
  )
  override = data_config.get("chat_template", "")
  if override in BUILTIN_TEMPLATES:
    found = (BUILTIN_TEMPLATES[override], f"built-in {override!r}")
  elif override:
    path = pathlib.Path(override)
    if not path.is_file():
      raise DataError(
        f"data config: chat_template {override!r} is neither a file nor one"
        f" of the built-in templates {sorted(BUILTIN_TEMPLATES)}"
      )
    found = (path.read_text(encoding="utf-8"), str(path))
  elif folder is not None:
    found = _folder_template(folder)
  else:
    found = None
  if found is None:
    return None
  text, source = found
  import jinja2

  try:
    _compile(text)
  except jinja2.exceptions.TemplateSyntaxError as e:
    raise DataError(
      f"{source}: the chat template does not compile: {e.message} (line"
      f" {e.lineno})"
    ) from None
  return ChatTemplate(text, special_tokens(folder), source)


def end_of_turn_id(tokenizer, template: ChatTemplate | None) -> int | None:
  """The id of the template's end-of-turn marker, when it is one token."""
  if template is None or not template.end_of_turn:
    return None
  try:
    ids = tokenizer.encode(template.end_of_turn)
  except ValueError:  # A word vocabulary without the marker.
    return None
  return ids[0] if len(ids) == 1 else None


def stop_ids(tokenizer, template: ChatTemplate | None) -> list[int]:
  """The ids that end a response: EOS, and the template's end of turn."""
  ids = [tokenizer.eos_id]
  end_of_turn = end_of_turn_id(tokenizer, template)
  if end_of_turn is not None and end_of_turn not in ids:
    ids.append(end_of_turn)
  return ids
