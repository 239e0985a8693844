"""LMTokenizer (tokenizers + jinja2, what a language model's device image holds) against transformers'
AutoTokenizer: the same ids, the same decoded text and the same rendered chat templates, on tokenizers
shaped like the real families' (byte-level BPE with a BOS post-processor as Llama 3, SentencePiece-style
Metaspace BPE as Llama 2 / Gemma, WordPiece) and on their chat templates."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _support import TEXT_ROWS, build_lm_tokenizer, minilm_dir

transformers = pytest.importorskip("transformers")

from edgeopt.errors import ConfigError  # noqa: E402
from edgeopt.llm.tokenizer import LMTokenizer  # noqa: E402

CHATML = ("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
          "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}"
          "{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
          "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}"
          "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
LLAMA3 = ("{{- bos_token }}{%- set ns = namespace(system='') %}{%- for m in messages %}{%- if m['role'] == 'system' %}"
          "{%- set ns.system = m['content'] | trim %}{%- endif %}{%- endfor %}"
          "{%- if ns.system %}{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' + ns.system + '<|eot_id|>' }}{%- endif %}"
          "{%- for message in messages if message['role'] != 'system' %}"
          "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
          "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
         "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
         "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
         "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}"
         "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}")
PHI3 = ("{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
        "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
        "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
        "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}")
TOOLS_JSON = ("{% for m in messages %}{{ m.role }}: {{ m.content | tojson }}{% if m.meta is defined %} {{ m.meta | tojson(indent=2) }}"
              "{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")

TEXTS = [t for t, _ in TEXT_ROWS] + ["", "  leading and trailing  ", "Café naïve — 東京 👍🏽", "<eos> inside text <pad>",
                                     "line one\nline two\ttab", "word " * 200]
CHATS = [
    [{"role": "user", "content": "Write a description for a red kettle."}],
    [{"role": "system", "content": "You write product copy."}, {"role": "user", "content": "  A wool coat  "}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Describe: café crème 👍"}],
]


def _byte_level(folder: Path, bos: str | None, specials: list[str], template: str, **kw) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([t for t, _ in TEXT_ROWS] * 4, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, tok.token_to_id(bos))])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **({"bos_token": bos} if bos else {}), **kw)
    fast.chat_template = template
    fast.save_pretrained(folder)
    return folder


def _metaspace(folder: Path, template: str) -> Path:
    """SentencePiece-style (Llama 2, Gemma): Metaspace pre-tokenizer, <s> added in front, byte fallback off."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Strip(" ", 1, 0)])
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<start_of_turn>", "<end_of_turn>"]
    tok.train_from_iterator([t for t, _ in TEXT_ROWS] * 4 + ["Café naïve — 東京 👍🏽 crème"],
                            trainers.BpeTrainer(vocab_size=500, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                                pad_token="<pad>", additional_special_tokens=["<start_of_turn>", "<end_of_turn>"])
    fast.chat_template = template
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizers_(tmp_path_factory, lm_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lm-tokenizers")
    return {
        "test-bpe": lm_tokenizer,
        "qwen-chatml": _byte_level(root / "qwen", None, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], CHATML,
                                   eos_token="<|im_end|>", pad_token="<|endoftext|>"),
        "llama3": _byte_level(root / "llama3", "<|begin_of_text|>", ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                                                                     "<|end_header_id|>"], LLAMA3, eos_token="<|eot_id|>"),
        "phi3": _byte_level(root / "phi3", None, ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], PHI3,
                            eos_token="<|endoftext|>"),
        "gemma-metaspace": _metaspace(root / "gemma", GEMMA),
        "json-template": _byte_level(root / "json", None, ["<eos>"], TOOLS_JSON, eos_token="<eos>"),
    }


@pytest.mark.parametrize("name", ["test-bpe", "qwen-chatml", "llama3", "phi3", "gemma-metaspace", "json-template"])
def test_same_ids_text_and_chat_as_transformers(tokenizers_, name):
    folder = tokenizers_[name]
    ref, got = transformers.AutoTokenizer.from_pretrained(folder), LMTokenizer(folder)
    assert len(got) == len(ref)
    assert (got.eos_token_id, got.pad_token_id, got.bos_token_id) == (ref.eos_token_id, ref.pad_token_id, ref.bos_token_id)
    assert bool(got.chat_template) == bool(ref.chat_template)
    for text in TEXTS:
        for special in (True, False):
            ids = ref(text, add_special_tokens=special)["input_ids"]
            assert got(text, add_special_tokens=special)["input_ids"] == ids, (name, text, special)
        for skip in (True, False):
            assert got.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), (name, text)
    assert got("word " * 200, truncation=True, max_length=17)["input_ids"] == \
        ref("word " * 200, truncation=True, max_length=17)["input_ids"]
    chats = [CHATS[0], CHATS[2]] if name == "gemma-metaspace" else CHATS
    for chat in chats:
        for gen_prompt in (True, False):
            want = ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen_prompt)
            assert got.apply_chat_template(chat, add_generation_prompt=gen_prompt) == want, (name, chat)
            assert got.apply_chat_template(chat, tokenize=True, add_generation_prompt=gen_prompt) == \
                ref(want, add_special_tokens=False)["input_ids"]


def test_template_data_and_its_own_refusals(tokenizers_):
    folder = tokenizers_["json-template"]
    ref, got = transformers.AutoTokenizer.from_pretrained(folder), LMTokenizer(folder)
    chat = [{"role": "user", "content": 'quote " and <b>tags</b> & ünïcode', "meta": {"b": [1, 2.5, None, True]}}]
    assert got.apply_chat_template(chat) == ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    gemma = LMTokenizer(tokenizers_["gemma-metaspace"])
    import jinja2

    with pytest.raises(jinja2.exceptions.TemplateError, match="System role not supported"):
        gemma.apply_chat_template(CHATS[1])
    with pytest.raises(ConfigError, match="empty conversation"):
        gemma.apply_chat_template([])


def test_templates_cannot_reach_python_internals(tmp_path):
    import jinja2

    folder = build_lm_tokenizer(tmp_path / "tok")
    (folder / "chat_template.jinja").write_text("{{ messages.__class__.__mro__ }}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        LMTokenizer(folder).apply_chat_template(CHATS[0])
    (folder / "chat_template.jinja").write_text("{% set ns = namespace() %}{% set ns._x = 1 %}")
    with pytest.raises(jinja2.exceptions.SecurityError):
        LMTokenizer(folder).apply_chat_template(CHATS[0])


def test_template_from_tokenizer_config_and_none(tmp_path):
    folder = build_lm_tokenizer(tmp_path / "tok")
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").unlink()
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": template}))
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    assert LMTokenizer(folder).apply_chat_template(CHATS[0]) == \
        ref.apply_chat_template(CHATS[0], tokenize=False, add_generation_prompt=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = LMTokenizer(folder)
    assert tok.chat_template is None
    with pytest.raises(ConfigError, match="no chat template"):
        tok.apply_chat_template(CHATS[0])


def test_wordpiece_decode_cleans_up_as_transformers():
    folder = minilm_dir()
    ref, got = transformers.AutoTokenizer.from_pretrained(folder), LMTokenizer(folder)
    for text in ["Hello , world ! it 's fine . Isn 't it ?", *TEXTS[:5]]:
        ids = ref(text)["input_ids"]
        assert got(text)["input_ids"] == ids
        assert got.decode(ids) == ref.decode(ids)
        assert got.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
