"""TextTokenizer (tokenizers only) gives exactly transformers' ids; save_tokenizer writes a tokenizer.json
for checkpoints that only have a slow tokenizer; serving-side code loads neither torch nor transformers."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _support import REPO, minilm_dir
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from edgeopt.errors import InputError
from edgeopt.models.tokenizer import TextTokenizer, save_tokenizer

transformers = pytest.importorskip("transformers")

DATA = REPO / "examples" / "product-classifier" / "data"
EXAMPLE_TEXTS = [json.loads(line)["text"] for f in sorted(DATA.glob("*.jsonl")) for line in f.read_text().splitlines() if line.strip()]

LONG = " ".join(EXAMPLE_TEXTS)[:20_000]
TRICKY = [
    "Crème brûlée, naïve café, déjà vu, Ångström, façade, STRASSE, straße",
    "combining: e\u0301 a\u0300 o\u0308 n\u0303 (decomposed) vs é à ö ñ; ligature ﬁ; ① ＦＵＬＬＷＩＤＴＨ",
    "emoji 👍 👍🏽 👩🏿‍💻 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷",
    "東京は日本の首都です。中文分词测试 한국어 텍스트",
    "مرحبا بالعالم — שלום עולם — mixed abc مرحبا 123 שלום",
    "zero\u200bwidth\u200cnon\u200djoiner\ufeffbom\u2060word\u00adsoft",
    "ctrl\x00\x01\x07\x1b\x7f\x85 chars end",
    "tab\tseparated\nnew line\r\nwindows\u2028line sep\u2029para",
    "",
    "   ",
    "\t\n \r\n",
    "[CLS] [SEP] [PAD] [MASK] [UNK] <s> </s> <pad> <mask> <unk> literal special tokens",
    "a",
    LONG,
    "x" * 20_000,
]
assert len(LONG) == 20_000


def _assert_same(ref, ours: TextTokenizer, texts: list[str], padding: str, max_length: int) -> None:
    """Our arrays equal transformers' exactly. Where transformers returns no token_type_ids, the
    Preprocessor feeds zeros, so ours must be zeros."""
    want = ref(texts, padding=padding, truncation=True, max_length=max_length, return_tensors="np")
    got = ours(texts, padding=padding, max_length=max_length)
    assert set(got) == {"input_ids", "attention_mask", "token_type_ids"}
    for name, arr in got.items():
        exp = np.asarray(want[name]) if name in want else np.zeros_like(np.asarray(want["input_ids"]))
        assert arr.dtype == np.int64
        assert arr.shape == exp.shape, (name, padding, max_length, arr.shape, exp.shape)
        bad = [i for i in range(len(texts)) if not np.array_equal(arr[i], exp[i])]
        assert not bad, f"{name} differs ({padding}, max_length={max_length}) for {[texts[i][:40] for i in bad[:5]]}"


def _pipeline(tk: Tokenizer) -> dict:
    """The backend's serialized pipeline without the per-call padding/truncation."""
    d = json.loads(tk.to_str())
    d.pop("padding", None)
    d.pop("truncation", None)
    return d


# ---------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2, the real checkpoint
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm():
    folder = minilm_dir()
    assert (folder / "tokenizer.json").is_file()
    return transformers.AutoTokenizer.from_pretrained(folder), TextTokenizer(folder)


@pytest.mark.parametrize("padding", ["longest", "max_length"])
@pytest.mark.parametrize("max_length", [8, 16, 128, 512])
def test_minilm_example_data(minilm, padding, max_length):
    ref, ours = minilm
    for i in range(0, len(EXAMPLE_TEXTS), 250):  # batches of mixed lengths
        _assert_same(ref, ours, EXAMPLE_TEXTS[i:i + 250], padding, max_length)


@pytest.mark.parametrize("padding", ["longest", "max_length"])
@pytest.mark.parametrize("max_length", [8, 16, 128, 512])
def test_minilm_tricky_text(minilm, padding, max_length):
    ref, ours = minilm
    _assert_same(ref, ours, TRICKY, padding, max_length)
    for text in TRICKY:  # one at a time too: "longest" then pads nothing
        _assert_same(ref, ours, [text], padding, max_length)


def test_minilm_pipeline_is_transformers_pipeline(minilm):
    ref, ours = minilm
    assert _pipeline(ours.backend) == _pipeline(ref.backend_tokenizer)
    assert (ours.pad_token, ours.pad_token_id, ours.padding_side, ours.model_max_length) == ("[PAD]", 0, "right", 512)


def test_minilm_long_input_is_truncated(minilm):
    _, ours = minilm
    enc = ours([LONG, "short"], max_length=512)
    assert enc["input_ids"].shape == (2, 512)
    assert enc["input_ids"][0, -1] == 102 and enc["attention_mask"][1].sum() == 3


def test_minilm_stored_padding_and_truncation_do_not_leak(minilm):
    """MiniLM's tokenizer.json stores Fixed(128) padding and truncation at 128: the call's settings win."""
    folder = minilm_dir()
    stored = json.loads((folder / "tokenizer.json").read_text())
    assert stored["padding"]["strategy"] == {"Fixed": 128} and stored["truncation"]["max_length"] == 128
    _, ours = minilm
    assert ours(["hello world"], max_length=512)["input_ids"].shape == (1, 4)
    assert ours([LONG], max_length=512)["input_ids"].shape == (1, 512)
    assert ours(["hello"], max_length=300, padding="max_length")["input_ids"].shape == (1, 300)


# ---------------------------------------------------------------------------------------------
# other tokenizer families, built offline with the tokenizers library
# ---------------------------------------------------------------------------------------------

def _bpe_roberta(d: Path, padding_side: str) -> Path:
    """Byte-level BPE, RoBERTa style: <s> A </s>, pad id 1."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(EXAMPLE_TEXTS, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tk.post_processor = processors.RobertaProcessing(("</s>", tk.token_to_id("</s>")), ("<s>", tk.token_to_id("<s>")),
                                                     trim_offsets=True, add_prefix_space=False)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", cls_token="<s>",
        sep_token="</s>", mask_token=AddedToken("<mask>", lstrip=True, rstrip=False), padding_side=padding_side,
        model_max_length=512)
    fast.save_pretrained(d)
    return d


def _unigram_xlmr(d: Path) -> Path:
    """SentencePiece-style Unigram, XLM-R style (NFKC, Metaspace, <s> A </s>), left padding, pad id 1."""
    tk = Tokenizer(models.Unigram())
    tk.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tk.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tk.train_from_iterator(EXAMPLE_TEXTS, trainers.UnigramTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], unk_token="<unk>", show_progress=False))
    tk.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                      special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>", cls_token="<s>",
        sep_token="</s>", mask_token=AddedToken("<mask>", lstrip=True), padding_side="left", model_max_length=512)
    fast.save_pretrained(d)
    return d


def _wordpiece_cased(d: Path) -> Path:
    """Cased WordPiece, BERT style, with [PAD] last in the special tokens (id 4)."""
    tk = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=False)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece()
    tk.train_from_iterator(EXAMPLE_TEXTS, trainers.WordPieceTrainer(
        vocab_size=700, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[MASK]", "[PAD]"], show_progress=False))
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                      special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                                sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    fast.save_pretrained(d)
    return d


HAND_VOCAB = ["[UNK]", "hello", "world", "[CLS]", "[SEP]", "[PAD]", "[MASK]", "##s", "a", "b", "c", ",", "!", "."]


def _handwritten(d: Path) -> Path:
    """A tokenizer.json written by the tokenizers library itself: special tokens only in the vocabulary
    (transformers registers them), padding (left, pad token [MASK], 40 long) and truncation (3, left)
    stored in the file, and a tokenizer_config.json that names no pad token or sides."""
    tk = Tokenizer(models.WordPiece({w: i for i, w in enumerate(HAND_VOCAB)}, unk_token="[UNK]"))
    tk.normalizer = normalizers.BertNormalizer(lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                      special_tokens=[("[CLS]", 3), ("[SEP]", 4)])
    tk.enable_padding(direction="left", pad_id=6, pad_token="[MASK]", length=40, pad_type_id=1)
    tk.enable_truncation(3, direction="left")
    d.mkdir()
    tk.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
        "mask_token": "[MASK]", "model_max_length": 64}))
    return d


def _v4_config(d: Path) -> Path:
    """MiniLM's tokenizer.json with a config as transformers 4 writes it (added_tokens_decoder), plus
    tokens that are in neither the vocabulary nor tokenizer.json: an added token, an extra special
    token and a model-specific one ("image_token"); transformers appends them to the vocabulary."""
    d.mkdir()
    shutil.copy(minilm_dir() / "tokenizer.json", d / "tokenizer.json")
    cfg = json.loads((minilm_dir() / "tokenizer_config.json").read_text())
    plain = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    cfg["added_tokens_decoder"] = {
        "0": {"content": "[PAD]", **plain, "special": True}, "100": {"content": "[UNK]", **plain, "special": True},
        "101": {"content": "[CLS]", **plain, "special": True}, "102": {"content": "[SEP]", **plain, "special": True},
        "103": {"content": "[MASK]", **plain, "special": True},
        "30522": {"content": "<ent>", **plain, "special": False}}
    cfg.update(additional_special_tokens=["<sep2>"], image_token="<img>", tokenizer_class="PreTrainedTokenizerFast")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    return d


FAMILIES = {
    "v4-config-added-tokens": _v4_config,
    "bpe-roberta": lambda d: _bpe_roberta(d, "right"),
    "bpe-roberta-left": lambda d: _bpe_roberta(d, "left"),
    "unigram-xlmr-left": _unigram_xlmr,
    "wordpiece-cased": _wordpiece_cased,
    "handwritten-json": _handwritten,
}
FAMILY_TEXTS = TRICKY + EXAMPLE_TEXTS[:40] + ["hellos, world! [CLS] hello [SEP] [MASK]world", "<s>hi</s> <mask> there<pad>",
                                              "an <ent>entity</ent> <img> and<sep2>more"]


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request, tmp_path_factory):
    folder = FAMILIES[request.param](tmp_path_factory.mktemp("tok") / request.param)
    assert (folder / "tokenizer.json").is_file()
    return request.param, transformers.AutoTokenizer.from_pretrained(folder), TextTokenizer(folder)


@pytest.mark.parametrize("padding", ["longest", "max_length"])
@pytest.mark.parametrize("max_length", [5, 16, 64, 512])
def test_family_same_ids(family, padding, max_length):
    _, ref, ours = family
    _assert_same(ref, ours, FAMILY_TEXTS, padding, max_length)
    _assert_same(ref, ours, FAMILY_TEXTS[2:3], padding, max_length)


def test_family_pipeline_and_settings(family):
    name, ref, ours = family
    assert _pipeline(ours.backend) == _pipeline(ref.backend_tokenizer)
    assert (ours.pad_token, ours.pad_token_id, ours.padding_side, ours.truncation_side) == \
        (ref.pad_token, ref.pad_token_id, ref.padding_side, ref.truncation_side)
    expected = {"bpe-roberta": (1, "right"), "bpe-roberta-left": (1, "left"), "unigram-xlmr-left": (1, "left"),
                "wordpiece-cased": (4, "right"), "handwritten-json": (6, "left"), "v4-config-added-tokens": (0, "right")}[name]
    assert (ours.pad_token_id, ours.padding_side) == expected


def test_left_padding_pads_on_the_left(family):
    _, _, ours = family
    enc = ours(["a", "a b c a b c a b c"], max_length=64)
    if ours.padding_side == "left":
        assert enc["attention_mask"][0, 0] == 0 and enc["attention_mask"][0, -1] == 1
        assert enc["input_ids"][0, 0] == ours.pad_token_id
    else:
        assert enc["attention_mask"][0, 0] == 1 and enc["attention_mask"][0, -1] == 0


def test_handwritten_needs_what_transformers_adds(tmp_path):
    """The raw tokenizer.json alone tokenizes differently (stored padding/truncation; "[CLS]" split into
    pieces): the replayed transformers rules are what makes the ids equal."""
    folder = _handwritten(tmp_path / "hand")
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    ours = TextTokenizer(folder)
    text = "hello [CLS] world"
    assert len(raw.encode(text).ids) == 40  # stored Fixed(40) padding
    raw.no_padding()
    raw.no_truncation()
    assert raw.encode(text).ids != ours([text], max_length=64)["input_ids"][0].tolist()
    assert ours([text], max_length=64)["input_ids"][0].tolist() == [3, 1, 3, 2, 4]


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------

def test_folder_without_tokenizer_json(tmp_path):
    d = tmp_path / "slow"
    d.mkdir()
    shutil.copy(minilm_dir() / "vocab.txt", d / "vocab.txt")
    shutil.copy(minilm_dir() / "tokenizer_config.json", d / "tokenizer_config.json")
    with pytest.raises(InputError) as e:
        TextTokenizer(d)
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg and "tokenizer.json" in msg and "re-export" in msg


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="no such tokenizer folder"):
        TextTokenizer(tmp_path / "nope")


def test_no_pad_token(tmp_path):
    tk = Tokenizer(models.WordLevel({"[UNK]": 0, "hi": 1}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    d = tmp_path / "nopad"
    d.mkdir()
    tk.save(str(d / "tokenizer.json"))
    ours = TextTokenizer(d)
    with pytest.raises(InputError, match="no padding token"):
        ours(["hi"], max_length=8)


# ---------------------------------------------------------------------------------------------
# save_tokenizer: slow-only checkpoints get a tokenizer.json
# ---------------------------------------------------------------------------------------------

def _slow_classic(d: Path) -> Path:
    """A checkpoint folder as older Hub uploads have it: vocab.txt + configs, no tokenizer.json."""
    d.mkdir()
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        shutil.copy(minilm_dir() / name, d / name)
    return d


def _slow_python(d: Path) -> Path:
    """A genuinely slow (Python) tokenizer: transformers 5's BertTokenizer writes a tokenizer.json and
    no vocab.txt, so use its Python implementation, which writes vocab.txt and no tokenizer.json."""
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    BertTokenizerLegacy(str(minilm_dir() / "vocab.txt"), do_lower_case=True, model_max_length=512).save_pretrained(d)
    return d


@pytest.mark.parametrize("make", [_slow_classic, _slow_python], ids=["vocab-only", "python-tokenizer"])
def test_save_tokenizer_from_slow_only(tmp_path, make):
    src = make(tmp_path / "src")
    assert not (src / "tokenizer.json").exists() and (src / "vocab.txt").is_file()
    ref = transformers.AutoTokenizer.from_pretrained(src)
    with pytest.raises(InputError):
        TextTokenizer(src)
    dst = save_tokenizer(src, tmp_path / "dst")
    assert (dst / "tokenizer.json").is_file()
    ours = TextTokenizer(dst)
    for padding in ("longest", "max_length"):
        for max_length in (16, 512):
            _assert_same(ref, ours, TRICKY + EXAMPLE_TEXTS[:50], padding, max_length)


def test_save_tokenizer_of_fast_folder_round_trips(tmp_path):
    src = _bpe_roberta(tmp_path / "src", "left")
    dst = save_tokenizer(src, tmp_path / "dst")
    ref = transformers.AutoTokenizer.from_pretrained(src)
    for folder in (dst,):
        _assert_same(ref, TextTokenizer(folder), FAMILY_TEXTS, "longest", 64)
    assert json.loads((dst / "tokenizer_config.json").read_text())["padding_side"] == "left"


def test_save_tokenizer_unconvertible(tmp_path):
    """A slow tokenizer with no converter to tokenizers: one clear InputError."""
    src = tmp_path / "perceiver"
    transformers.PerceiverTokenizer().save_pretrained(src)
    with pytest.raises(InputError, match="cannot be converted"):
        save_tokenizer(src, tmp_path / "dst")


def test_preprocessor_matches_transformers(tmp_path):
    """Preprocessor.text: the inputs the old transformers-based code fed, both padding modes."""
    from edgeopt.models.hf import adopt_hf_folder
    from edgeopt.models.preprocess import Preprocessor

    art = adopt_hf_folder(minilm_dir())
    pre = Preprocessor(art)
    ref = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    for seq_len, kw in ((None, {"padding": "longest", "max_length": art.manifest.io.preprocessing.max_length}),
                        (32, {"padding": "max_length", "max_length": 32})):
        got = pre(TRICKY, seq_len=seq_len)
        want = ref(TRICKY, truncation=True, return_tensors="np", **kw)
        assert list(got) == pre.input_names
        for name in pre.input_names:
            np.testing.assert_array_equal(got[name], want[name])


def test_preprocessor_converts_slow_only_checkpoint(tmp_path):
    """An HF checkpoint with only a slow tokenizer still works in the (transformers-side) stages."""
    from edgeopt.models.hf import adopt_hf_folder
    from edgeopt.models.preprocess import Preprocessor

    src = tmp_path / "ckpt"
    shutil.copytree(minilm_dir(), src, ignore=shutil.ignore_patterns("tokenizer.json"))
    pre = Preprocessor(adopt_hf_folder(src))
    ref = transformers.AutoTokenizer.from_pretrained(src)
    got = pre(EXAMPLE_TEXTS[:20])
    want = ref(EXAMPLE_TEXTS[:20], padding="longest", truncation=True, max_length=512, return_tensors="np")
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
    assert not (src / "tokenizer.json").exists()  # the checkpoint is left as it was


# ---------------------------------------------------------------------------------------------
# serving side stays lean
# ---------------------------------------------------------------------------------------------

LEAN_SCRIPT = r"""
import json, sys
from pathlib import Path
import numpy as np
from edgeopt.models.tokenizer import TextTokenizer
folder = Path(sys.argv[1])
enc = TextTokenizer(folder)(["hi"], max_length=16)
assert enc["input_ids"].tolist() == [[101, 7632, 102]], enc
from edgeopt.artifact import Artifact, ImagePreprocessing, IOSpec, Manifest, TensorSpec, TextPreprocessing
from edgeopt.models.preprocess import Preprocessor
io = IOSpec(inputs=[TensorSpec(name="pixel_values", dtype="float32", shape=["batch", 3, 32, 32])],
            outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 2])],
            preprocessing=ImagePreprocessing(size=[32, 32], channels=3))
pre = Preprocessor(Artifact(Path("."), Manifest(format="onnx", task="image-classification", labels=["a", "b"], io=io)))
x = pre(np.random.default_rng(0).random((2, 50, 40, 3)) * 255)["pixel_values"]
assert x.shape == (2, 3, 32, 32), x.shape
names = ["input_ids", "attention_mask", "token_type_ids"]
io = IOSpec(inputs=[TensorSpec(name=n, dtype="int64", shape=["batch", "sequence"]) for n in names],
            outputs=[TensorSpec(name="embeddings", dtype="float32", shape=["batch", 384])],
            preprocessing=TextPreprocessing(tokenizer=".", max_length=128))
pre = Preprocessor(Artifact(folder, Manifest(format="onnx", task="feature-extraction", io=io)))
assert pre(["hello world"])["input_ids"].shape == (1, 4)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))))
"""


def test_serving_side_loads_neither_torch_nor_transformers():
    proc = subprocess.run([sys.executable, "-c", LEAN_SCRIPT, str(minilm_dir())], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []


def test_lean_probe_can_fail():
    """The probe sees transformers when something does import it."""
    script = LEAN_SCRIPT.replace("import numpy as np", "import numpy as np\nimport transformers")
    proc = subprocess.run([sys.executable, "-c", script, str(minilm_dir())], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "transformers" in json.loads(proc.stdout.strip().splitlines()[-1])
