"""A language model's tokenizer without transformers: what a device image (onnxruntime-genai, tokenizers,
jinja2) needs to serve a text-generation model.

``LMTokenizer`` reads the tokenizer folder of an ONNX Runtime GenAI artifact (``tokenizer.json``,
``tokenizer_config.json``, ``chat_template.jinja``) with the ``tokenizers`` library (through
``edgeopt.models.tokenizer.TextTokenizer``, which registers special tokens as transformers does) and
renders chat templates as transformers 5 does (``apply_chat_template``: a sandboxed jinja2 environment
with ``trim_blocks``/``lstrip_blocks``, the ``loopcontrols`` extension, its ``tojson`` filter,
``raise_exception``/``strftime_now`` globals and the special tokens as variables), so the same prompt gives
the same ids on the host and in the image. ``tests/test_lm_tokenizer.py`` checks it against
``transformers.AutoTokenizer``.
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from ..errors import ConfigError, InputError, MissingDependencyError
from ..models.tokenizer import CONFIG_FILE, SPECIAL_TOKENS_ATTRIBUTES, TextTokenizer, _read_json

CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers >= 4.53 saves a single template here
CHAT_TEMPLATE_DIR = "additional_chat_templates"
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")  # transformers' aliases for a message's reasoning


def _chat_templates(folder: Path, config: dict) -> Union[str, dict[str, str], None]:
    """transformers' loading order: template files take priority over tokenizer_config.json's entry."""
    found: dict[str, str] = {}
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        found["default"] = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if (folder / CHAT_TEMPLATE_DIR).is_dir():
        for f in sorted((folder / CHAT_TEMPLATE_DIR).glob("*.jinja")):
            found[f.name.removesuffix(".jinja")] = f.read_text(encoding="utf-8")
    if len(found) == 1 and "default" in found:
        return found["default"]
    if found:
        return found
    value = config.get("chat_template")
    if isinstance(value, (list, tuple)):  # stored as [{"name": ..., "template": ...}]
        return {t["name"]: t["template"] for t in value if isinstance(t, dict) and "name" in t and "template" in t}
    return value if isinstance(value, str) and value else None


@lru_cache(maxsize=8)
def _compile(template: str):
    """The template in transformers' jinja2 environment (utils/chat_template_utils.py)."""
    try:
        import jinja2
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        raise MissingDependencyError("jinja2", extra="genai", purpose="the model's chat template") from e
    release = tuple(int(x) for x in re.findall(r"\d+", jinja2.__version__)[:3])
    if release < (3, 1, 6):  # earlier releases have sandbox escapes; templates are untrusted
        raise MissingDependencyError(f"jinja2>=3.1.6 (found {jinja2.__version__})", extra="genai",
                                     purpose="the model's chat template")

    class Generation(Extension):  # {% generation %}...{% endgeneration %}: assistant-mask tracking, rendered as is
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):  # no underscore attributes (CPython internals)
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot store underscore-prefixed attributes ({name!r})")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=TemplateDict(), namespace=TemplateNamespace)
    return env.from_string(template)


def _plain(value: Any) -> Any:
    """What a template may see: plain JSON-like data (transformers' _plain_template_data, for messages)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


class LMTokenizer:
    """The subset of a transformers tokenizer that generation needs: ``tok(text)["input_ids"]``,
    ``decode``, ``apply_chat_template``, ``chat_template``, ``eos_token_id``, ``pad_token_id``, ``len()``."""

    def __init__(self, folder: Union[str, Path]):
        folder = Path(folder)
        self._text = TextTokenizer(folder)
        self._tk = self._text.backend
        config = _read_json(folder / CONFIG_FILE) or {}
        self.folder = folder
        self.chat_template = _chat_templates(folder, config)
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False))
        # transformers skips the WordPiece clean-up for BPE models unless told to corrupt the output anyway
        if type(self._tk.model).__name__ == "BPE" and not config.get(
                "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False):
            self.clean_up_tokenization_spaces = False
        self.special_tokens_map = {k: v for k, v in self._text.special_tokens.items() if k in SPECIAL_TOKENS_ATTRIBUTES}
        self.eos_token = self.special_tokens_map.get("eos_token")
        self.eos_token_id = self._text._token_id(self._tk, self.eos_token) if self.eos_token else None
        self.bos_token_id = (self._text._token_id(self._tk, self.special_tokens_map["bos_token"])
                             if "bos_token" in self.special_tokens_map else None)
        self.pad_token_id = self._text.pad_token_id
        self.truncation_side = self._text.truncation_side

    def __len__(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    def __call__(self, text: str, add_special_tokens: bool = True, truncation: bool = False,
                 max_length: Optional[int] = None) -> dict[str, list[int]]:
        if not isinstance(text, str):
            raise InputError(f"the prompt must be a string, got {type(text).__name__}")
        with self._text._lock:  # truncation is backend state, shared with TextTokenizer
            tk = self._tk
            tk.no_padding()
            if truncation and max_length:
                tk.enable_truncation(int(max_length), stride=0, strategy="longest_first", direction=self.truncation_side)
            else:
                tk.no_truncation()
            ids = tk.encode(text, add_special_tokens=add_special_tokens).ids
        return {"input_ids": list(ids)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        text = self._tk.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces:  # transformers' clean_up_tokenization (WordPiece vocabularies)
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def get_chat_template(self) -> str:
        t = self.chat_template
        if isinstance(t, dict):
            if "default" not in t:
                raise ConfigError(f"{self.folder}: the tokenizer has several chat templates ({', '.join(sorted(t))}) and "
                                  "none named 'default'")
            t = t["default"]
        if not t:
            raise ConfigError(f"{self.folder}: the tokenizer has no chat template; give the prompt as plain text")
        return t

    def apply_chat_template(self, messages: list[dict], tokenize: bool = False, add_generation_prompt: bool = True,
                            **kwargs: Any) -> Union[str, list[int]]:
        """The conversation rendered by the model's template (as transformers renders it); ``tokenize``:
        its ids (no special tokens added: the template writes them)."""
        if not messages:
            raise ConfigError("cannot apply the chat template to an empty conversation; give at least one message")
        chat = []
        for m in messages:
            m = _plain(m)
            if not isinstance(m, dict):
                raise ConfigError(f"chat messages must be objects with 'role' and 'content', got {m!r}")
            m = {k: v for k, v in m.items() if v is not None}
            reasoning = next((m[k] for k in _REASONING_FIELDS if m.get(k) is not None), None)
            if reasoning is not None:
                m = {"thinking": reasoning, **m, "reasoning_content": reasoning}
            chat.append(m)
        text = _compile(self.get_chat_template()).render(messages=chat, tools=None, documents=None,
                                                          add_generation_prompt=add_generation_prompt,
                                                          **{**self.special_tokens_map, **_plain(kwargs)})
        return self(text, add_special_tokens=False)["input_ids"] if tokenize else text
