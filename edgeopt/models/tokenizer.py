"""Text tokenization without torch or transformers.

``TextTokenizer`` loads a tokenizer folder (``tokenizer.json`` + ``tokenizer_config.json`` /
``special_tokens_map.json``) with the ``tokenizers`` library alone and gives the same ids as
``transformers.AutoTokenizer.from_pretrained(folder)(texts, padding=..., truncation=True,
max_length=..., return_tensors="np")``. It replays what transformers 5 does on top of the Rust
backend (``TokenizersBackend``, transformers/tokenization_utils_tokenizers.py and
tokenization_utils_base.py): which special tokens it registers, the padding token and side, the
truncation side, and that the call's padding/truncation replace whatever ``tokenizer.json`` stored.

``save_tokenizer`` is for the training/export side: it may import transformers, and it makes sure
the saved folder has a ``tokenizer.json`` (converting a slow-only tokenizer) that ``TextTokenizer``
reproduces exactly.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"

# transformers' PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES, in its order
SPECIAL_TOKENS_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
LARGE_INTEGER = int(1e20)  # transformers.tokenization_utils_base.LARGE_INTEGER
VERY_LARGE_INTEGER = int(1e30)  # ... VERY_LARGE_INTEGER: "no model_max_length"

# Texts save_tokenizer checks TextTokenizer against transformers with.
_PROBES = [
    "Hello, world! This is a test.",
    "",
    "   ",
    "Café naïve déjà vu — e\u0301 über STRASSE",
    "👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈",
    "東京は日本の首都です。中文测试",
    "مرحبا بالعالم שלום עולם",
    "zero\u200bwidth\u200ctext\u200d\ufeff and\tcontrol\x00\x07\x1b chars\r\nnew line",
    "word " * 300,
]


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: unreadable JSON ({e}); re-export the model with a current edgeopt to rewrite its tokenizer") from e
    return data if isinstance(data, dict) else None


def _added_token(value: Any, special: bool | None = None):
    """A serialized AddedToken (dict, with or without "__type") as a tokenizers.AddedToken."""
    from tokenizers import AddedToken

    d = {k: v for k, v in value.items() if k != "__type"}
    if special is not None:
        d["special"] = special
    return AddedToken(**d)


def _convert_added_tokens(obj: Any) -> Any:
    """transformers' ``convert_added_tokens(save=False)``: {"__type": "AddedToken", ...} -> AddedToken."""
    if isinstance(obj, dict) and obj.get("__type") == "AddedToken":
        return _added_token(obj)
    if isinstance(obj, (list, tuple)):
        return [_convert_added_tokens(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _convert_added_tokens(v) for k, v in obj.items()}
    return obj


class TextTokenizer:
    """A tokenizer folder, tokenized the way transformers does, with the ``tokenizers`` library only."""

    def __init__(self, folder: str | Path):
        from tokenizers import AddedToken, Tokenizer, processors

        self.folder = Path(folder)
        tok_file = self.folder / TOKENIZER_FILE
        if not tok_file.is_file():
            if not self.folder.is_dir():
                raise InputError(f"{self.folder}: no such tokenizer folder; check the artifact's preprocessing.tokenizer path")
            raise InputError(f"{self.folder}: no {TOKENIZER_FILE} (the tokenizer was saved in its slow form only, which edgeopt "
                             f"cannot read without transformers); re-export the model with a current edgeopt, which writes {TOKENIZER_FILE}")
        try:
            tk = Tokenizer.from_file(str(tok_file))
        except Exception as e:
            raise InputError(f"{tok_file}: cannot load the tokenizer ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                             "re-export the model with a current edgeopt to rewrite it") from e

        config = _read_json(self.folder / CONFIG_FILE)
        init: dict[str, Any] = dict(config) if config is not None else {}
        # tokenization_utils_base._from_pretrained
        init.pop("tokenizer_class", None)
        init.pop("add_bos_token", None)  # popped because tokenizer.json exists
        init.pop("add_eos_token", None)
        if "additional_special_tokens" in init and not init.get("extra_special_tokens"):
            init["extra_special_tokens"] = init.pop("additional_special_tokens")
        model_specific = {k: init.pop(k) for k in list(init)
                          if k not in SPECIAL_TOKENS_ATTRIBUTES and k.endswith("_token") and isinstance(init[k], str)}
        if isinstance(init.get("extra_special_tokens"), dict):
            model_specific.update(init.pop("extra_special_tokens"))

        added_tokens_decoder: dict[int, AddedToken] = {}
        if "added_tokens_decoder" in init:
            for idx, token in init["added_tokens_decoder"].items():
                token = _added_token(token) if isinstance(token, dict) else token
                added_tokens_decoder[int(idx)] = token
        else:
            # legacy files: special_tokens_map.json, added_tokens.json, tokenizer.json's added tokens
            special_map = _read_json(self.folder / SPECIAL_TOKENS_MAP_FILE) or {}
            for key, value in special_map.items():
                if isinstance(value, dict) and key != "extra_special_tokens":
                    value = _added_token({k: v for k, v in value.items() if k != "special"}, special=True)
                elif key == "extra_special_tokens" and isinstance(value, list):
                    existing = list(init.get("extra_special_tokens") or [])
                    for t in value:
                        t = _added_token(t, special=True) if isinstance(t, dict) else t
                        if t not in existing:
                            existing.append(t)
                    value = existing
                init[key] = value
            if isinstance(init.get("extra_special_tokens"), dict):
                model_specific.update(init.pop("extra_special_tokens"))
            legacy_added = _read_json(self.folder / ADDED_TOKENS_FILE)
            if legacy_added:
                specials = {str(init[k]) for k in SPECIAL_TOKENS_ATTRIBUTES if init.get(k)}
                specials.update(str(t) for t in (init.get("extra_special_tokens") or []))
                for content, idx in legacy_added.items():
                    is_special = content in specials
                    added_tokens_decoder[idx] = AddedToken(content, rstrip=False, lstrip=False, normalized=not is_special, special=is_special)
            for t in json.loads(tok_file.read_text(encoding="utf-8")).get("added_tokens", []):
                t = dict(t)
                idx = t.pop("id")
                added_tokens_decoder[idx] = AddedToken(**t)
        added_tokens_map = {str(t): t for t in added_tokens_decoder.values()}
        init = _convert_added_tokens(init)
        model_specific = _convert_added_tokens(model_specific)
        for key in SPECIAL_TOKENS_ATTRIBUTES:
            if init.get(key) is not None and added_tokens_map:
                init[key] = added_tokens_map.get(str(init[key]), init[key])

        # tokenization_utils_tokenizers.TokenizersBackend.__init__: defaults from the stored truncation/padding
        stored_truncation, stored_padding = tk.truncation, tk.padding
        if stored_truncation is not None:
            init.setdefault("truncation_side", stored_truncation["direction"])
        if stored_padding is not None:
            init.setdefault("pad_token", stored_padding["pad_token"])
            init.setdefault("padding_side", stored_padding["direction"])

        # PreTrainedTokenizerBase.__init__: the special tokens, in the order transformers keeps them
        if "additional_special_tokens" in init and "extra_special_tokens" not in init:
            init["extra_special_tokens"] = init.pop("additional_special_tokens")
        special: dict[str, Any] = dict.fromkeys(SPECIAL_TOKENS_ATTRIBUTES)
        extra: list = []
        auto_specific: dict[str, Any] = {}
        for key, value in init.items():
            if key in SPECIAL_TOKENS_ATTRIBUTES:
                if value is not None:
                    special[key] = value
            elif key == "extra_special_tokens":
                if isinstance(value, dict):
                    special.update(value)
                elif isinstance(value, (list, tuple)):
                    extra = list(value)
            elif key.endswith("_token") and isinstance(value, (str, AddedToken)):
                auto_specific[key] = value
        special.update({**auto_specific, **model_specific})

        self.model_max_length = int(init.get("model_max_length") or init.get("max_len") or VERY_LARGE_INTEGER)
        self.padding_side = init.get("padding_side") or "right"
        self.truncation_side = init.get("truncation_side") or "right"
        for what, side in (("padding_side", self.padding_side), ("truncation_side", self.truncation_side)):
            if side not in ("right", "left"):
                raise InputError(f"{self.folder / CONFIG_FILE}: {what} is {side!r}; it must be 'right' or 'left'")
        names = init.get("model_input_names")
        self.model_input_names = list(names) if isinstance(names, (list, tuple)) else None
        tk.encode_special_tokens = bool(init.get("split_special_tokens", False))

        # TokenizersBackend.__init__: (re-)register the added tokens and every special token
        tokens_to_add = [t for _, t in sorted(added_tokens_decoder.items(), key=lambda x: x[0])]
        added_now = tk.get_added_tokens_decoder()
        encoder = [added_now[i].content for i in sorted(added_now)]
        encoder += [str(t) for t in tokens_to_add]
        for value in special.values():
            if value is not None and str(value) not in encoder and value not in tokens_to_add:
                tokens_to_add.append(value)
        for value in extra:
            if str(value) not in encoder and value not in tokens_to_add:
                tokens_to_add.append(value)
        named = [str(v) for v in special.values() if v]
        to_add = []
        for t in tokens_to_add:
            if isinstance(t, str):
                t = AddedToken(t, special=True)
            elif isinstance(t, AddedToken) and not t.special and str(t) in named:
                t.special = True
            to_add.append(t)
        if to_add:
            tk.add_tokens(to_add)
        if tk.post_processor is None:  # TokenizersBackend.update_post_processor, no bos/eos
            tk.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])

        self.special_tokens = {k: str(v) for k, v in special.items() if v is not None}
        self.pad_token = self.special_tokens.get("pad_token")
        self.pad_token_id = self._token_id(tk, self.pad_token) if self.pad_token is not None else None
        self._tk = tk
        self._lock = threading.Lock()  # the backend's padding/truncation are set per call

    def _token_id(self, tk, token: str) -> int | None:
        """transformers' convert_tokens_to_ids: the unknown token's id for a token not in the vocabulary."""
        idx = tk.token_to_id(token)
        if idx is None and self.special_tokens.get("unk_token") is not None:
            idx = tk.token_to_id(self.special_tokens["unk_token"])
        return idx

    def save_pretrained(self, dst: str | Path) -> Path:
        """Write this tokenizer's folder, with its tokenizer.json, to ``dst`` (``save_tokenizer``; imports transformers)."""
        return save_tokenizer(self.folder, dst)

    @property
    def backend(self):
        """The configured ``tokenizers.Tokenizer`` (its padding/truncation are whatever the last call set)."""
        return self._tk

    def __call__(self, texts: Sequence[str], *, max_length: int | None = None,
                 padding: str = "longest") -> dict[str, np.ndarray]:
        """Tokenize a batch: truncate to ``max_length`` (None: the model's limit) and pad to the batch's
        longest ("longest") or to ``max_length`` ("max_length"). int64 arrays of shape (batch, length)."""
        if padding not in ("longest", "max_length"):
            raise InputError(f"padding is {padding!r}; use 'longest' or 'max_length'")
        texts, max_length, truncate, pad = self._plan(texts, max_length, padding)
        encodings = self._encode(texts, max_length, truncate, pad, length=max_length if padding == "max_length" else None)
        width = len(encodings[0].ids) if encodings else (max_length if padding == "max_length" and max_length else 0)
        if any(len(e.ids) != width for e in encodings):
            raise InputError("the tokenized batch is ragged; tokenize one text at a time or pass padding='max_length'")
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64).reshape(len(encodings), width)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(encodings), width)
        if self._zero_types:
            types = np.zeros_like(ids)
        else:
            types = np.asarray([e.type_ids for e in encodings], dtype=np.int64).reshape(len(encodings), width)
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def encode(self, texts: Sequence[str], *, max_length: int | None = None) -> list[Tokens]:
        """Tokenize without padding, truncated as ``__call__`` truncates: one ``Tokens`` per text, whose
        length is what it costs in a batch. ``pad`` makes the batch ``__call__(texts)`` would have made."""
        texts, max_length, truncate, _ = self._plan(texts, max_length, "longest")  # checks the padding token too
        return [Tokens(np.asarray(e.ids, dtype=np.int64), np.asarray(e.type_ids, dtype=np.int64))
                for e in self._encode(texts, max_length, truncate, False)]

    def pad(self, tokens: Sequence[Tokens]) -> dict[str, np.ndarray]:
        """Texts ``encode`` tokenized -> the batch padded to its longest, exactly as ``__call__`` pads."""
        self._require_pad()
        n = len(tokens)
        width = max((len(t) for t in tokens), default=0)
        ids = np.full((n, width), self.pad_token_id, dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        types = np.zeros((n, width), dtype=np.int64)
        for i, t in enumerate(tokens):
            k = len(t)
            cols = slice(width - k, width) if self.padding_side == "left" else slice(0, k)
            ids[i, cols] = t.ids
            mask[i, cols] = 1
            if not self._zero_types:
                types[i, cols] = t.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    @property
    def _zero_types(self) -> bool:
        return self.model_input_names is not None and "token_type_ids" not in self.model_input_names

    def _plan(self, texts, max_length: int | None, padding: str):
        """Checked texts, and the truncation/padding transformers would apply (_get_padding_truncation_strategies)."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        for t in texts:
            if not isinstance(t, str):
                raise InputError(f"text inputs must be strings, got {type(t).__name__}")
        truncate = pad = True
        if max_length is None:
            if self.model_max_length > LARGE_INTEGER:
                truncate = False
                pad = padding != "max_length"  # no length to pad to
            else:
                max_length = self.model_max_length
        if pad:
            self._require_pad()
        return texts, max_length, truncate, pad

    def _require_pad(self) -> None:
        if self.pad_token is None or self.pad_token_id is None or self.pad_token_id < 0:
            raise InputError(f"{self.folder}: the tokenizer has no padding token, so a batch cannot be padded; "
                             "set pad_token in its tokenizer_config.json")

    def _encode(self, texts: list[str], max_length: int | None, truncate: bool, pad: bool, length: int | None = None):
        with self._lock:
            tk = self._tk
            if truncate:
                tk.enable_truncation(max_length, stride=0, strategy="longest_first", direction=self.truncation_side)
            else:
                tk.no_truncation()
            if pad:
                tk.enable_padding(direction=self.padding_side, pad_id=self.pad_token_id, pad_type_id=0, pad_token=self.pad_token,
                                  length=length, pad_to_multiple_of=None)
            else:
                tk.no_padding()
            return tk.encode_batch(texts, add_special_tokens=True) if texts else []


class Tokens:
    """One text tokenized without padding (``TextTokenizer.encode``); ``len()`` is its token count."""

    __slots__ = ("ids", "type_ids")

    def __init__(self, ids: np.ndarray, type_ids: np.ndarray):
        self.ids = ids
        self.type_ids = type_ids

    def __len__(self) -> int:
        return len(self.ids)


def tokenizer_folder(artifact) -> Path:
    """The tokenizer folder an artifact with text preprocessing records."""
    pre = artifact.manifest.io.preprocessing
    if pre is None or getattr(pre, "kind", None) != "text":
        raise InputError(f"{artifact.path}: the artifact records no text preprocessing, so it has no tokenizer")
    return (Path(artifact.path) / pre.tokenizer).resolve()


def save_tokenizer(src: str | Path, dst: str | Path) -> Path:
    """Save the tokenizer of checkpoint folder ``src`` into ``dst`` (transformers' files plus a
    ``tokenizer.json``, converted from a slow tokenizer when the checkpoint has only that), and check
    that ``TextTokenizer(dst)`` tokenizes exactly as transformers does. Imports transformers."""
    src, dst = Path(src), Path(dst)
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        from ..errors import MissingDependencyError

        raise MissingDependencyError("transformers", "train", "saving a tokenizer") from e

    try:
        tok = AutoTokenizer.from_pretrained(src, use_fast=True)
    except Exception as e:
        raise InputError(f"{src}: cannot load the tokenizer ({_first_line(e)})") from e
    ref = tok
    if not getattr(tok, "is_fast", False) or getattr(tok, "backend_tokenizer", None) is None:
        tok = _to_fast(tok, src)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        tok.save_pretrained(dst)
    except Exception as e:
        raise InputError(f"{src}: cannot save the tokenizer to {dst} ({_first_line(e)})") from e
    tok.backend_tokenizer.save(str(dst / TOKENIZER_FILE))  # the backend transformers really uses
    # Pin what transformers takes from the tokenizer class, so that the folder says it by itself.
    cfg_path = dst / CONFIG_FILE
    cfg = _read_json(cfg_path) or {}
    cfg.update(padding_side=tok.padding_side, truncation_side=tok.truncation_side,
               model_input_names=list(tok.model_input_names))
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    _check_same(ref, dst)  # against the tokenizer the checkpoint itself has, slow or fast
    return dst


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _to_fast(tok, src: Path):
    """A slow (Python) tokenizer as a transformers fast tokenizer, via transformers' converters."""
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import (
        SLOW_TO_FAST_CONVERTERS,
        convert_slow_tokenizer,
    )

    name = type(tok).__name__
    # transformers 5 keeps some slow tokenizers as "<Name>Legacy"; their converter is registered under <Name>
    converter = SLOW_TO_FAST_CONVERTERS.get(name) or SLOW_TO_FAST_CONVERTERS.get(name.removesuffix("Legacy"))
    try:
        backend = converter(tok).converted() if converter is not None else convert_slow_tokenizer(tok)
    except Exception as e:
        raise InputError(f"{src}: the tokenizer ({type(tok).__name__}) has no {TOKENIZER_FILE} and cannot be converted to one "
                         f"({_first_line(e)}); save the checkpoint with a fast tokenizer (tokenizer.save_pretrained of "
                         "AutoTokenizer.from_pretrained(..., use_fast=True)) and try again") from e
    specials = {k: str(v) for k, v in tok.special_tokens_map.items() if k in SPECIAL_TOKENS_ATTRIBUTES and v is not None}
    extra = [str(t) for t in (getattr(tok, "extra_special_tokens", None) or getattr(tok, "additional_special_tokens", None) or [])]
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=tok.model_max_length,
                                   padding_side=tok.padding_side, truncation_side=tok.truncation_side,
                                   model_input_names=list(tok.model_input_names), **specials,
                                   **({"additional_special_tokens": extra} if extra else {}))
    return fast


def _check_same(tok, dst: Path) -> None:
    """TextTokenizer(dst) must give transformers' ids on a few hard texts, or the export would serve other inputs."""
    ours = TextTokenizer(dst)
    for padding, max_length in (("longest", 64), ("max_length", 24)):
        try:
            ref = tok(_PROBES, padding=padding, truncation=True, max_length=max_length, return_tensors="np")
        except ValueError as e:  # e.g. no padding token: TextTokenizer must refuse such a batch too
            if not _refuses(ours, padding, max_length):
                raise InputError(f"{dst}: transformers refuses to tokenize a batch ({_first_line(e)}) but the saved "
                                 "tokenizer does not; edgeopt cannot serve this tokenizer faithfully") from e
            continue
        got = ours(_PROBES, padding=padding, max_length=max_length)
        for name in ("input_ids", "attention_mask", "token_type_ids"):
            want = np.asarray(ref[name], dtype=np.int64) if name in ref else np.zeros_like(got["input_ids"])
            if want.shape != got[name].shape or not np.array_equal(want, got[name]):
                raise InputError(f"{dst}: the saved tokenizer ({type(tok).__name__}) does not give the same {name} without "
                                 "transformers as with it; edgeopt cannot serve this tokenizer faithfully")


def _refuses(ours: TextTokenizer, padding: str, max_length: int) -> bool:
    try:
        ours(_PROBES, padding=padding, max_length=max_length)
    except InputError:
        return True
    return False
