"""Checkpoints as users save them: bfloat16 / float16 weights, architectures with their own config
names (DistilBERT), broken files; and the messages that say what went wrong."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from _support import EDGEOPT_BIN, REPO, digits_io, minilm_dir
from edgeopt.artifact import load_artifact
from edgeopt.errors import ConfigError, InputError
from edgeopt.stages.export import ExportConfig, export


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def _save_bert(d: Path, dtype=None) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tok = _tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128, num_labels=3,
                     architectures=["BertForSequenceClassification"])
    model = BertForSequenceClassification(cfg).eval()
    (model.to(dtype) if dtype is not None else model).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _initializer_types(art) -> set[str]:
    model = onnx.load(str(art.path / "model.onnx"))
    return {onnx.TensorProto.DataType.Name(t.data_type) for t in model.graph.initializer if t.data_type in
            (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)}


def cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEOPT_QUIET": "1"}
    env.pop("EDGEOPT_DEBUG", None)
    return subprocess.run([EDGEOPT_BIN, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def bf16_bert(tmp_path_factory) -> Path:
    import torch

    return _save_bert(tmp_path_factory.mktemp("bf16") / "bert", torch.bfloat16)


# --- dtypes ---------------------------------------------------------------------------------------

def test_bfloat16_checkpoint_exports_in_float32(tmp_path, bf16_bert):
    assert json.loads((bf16_bert / "config.json").read_text())["dtype"] == "bfloat16"
    art = export(bf16_bert, tmp_path / "onnx", ExportConfig(check_samples=8))
    m = art.manifest.model
    assert (m.source_dtype, m.dtype, m.precision) == ("bfloat16", "float32", "fp32")
    assert m.optimization["level"] == "transformer-fusion"
    assert _initializer_types(art) == {"FLOAT"}
    assert art.manifest.metrics["numeric_check"]["outputs"]["logits"]["within_tolerance"]


def test_bfloat16_checkpoint_loads_as_float32(bf16_bert):
    import torch

    from edgeopt.models import load_torch_model

    module = load_torch_model(load_artifact(bf16_bert))
    assert {p.dtype for p in module.parameters()} == {torch.float32}


def test_source_dtype_from_safetensors_header_when_config_has_none(tmp_path, bf16_bert):
    from edgeopt.models import source_dtype

    d = tmp_path / "no-dtype"
    shutil.copytree(bf16_bert, d)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["dtype"]
    (d / "config.json").write_text(json.dumps(cfg))
    assert source_dtype(load_artifact(d)) == "bfloat16"


def test_cli_exports_bfloat16_checkpoint_as_float16(tmp_path, bf16_bert):
    proc = cli("export", bf16_bert, "-o", tmp_path / "fp16", "--dtype", "float16")
    assert proc.returncode == 0, proc.stderr
    art = load_artifact(tmp_path / "fp16")
    m = art.manifest
    assert (m.model.source_dtype, m.model.dtype, m.model.precision) == ("bfloat16", "float16", "fp16")
    assert m.lineage[-1].config["dtype"] == "float16"
    # float16 weights inside, float32 at the edges: preprocessing, bench and serve feed it unchanged
    assert "FLOAT16" in _initializer_types(art)
    graph = onnx.load(str(art.path / "model.onnx")).graph
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [t.dtype for t in m.io.outputs] == ["float32"]


def test_float16_export_cannot_be_quantized_again(tmp_path, tiny_text_classifier):
    from edgeopt.stages.quantize import QuantizeConfig, quantize

    art = export(tiny_text_classifier, tmp_path / "fp16", ExportConfig(dtype="float16", check_samples=4))
    assert art.manifest.model.precision == "fp16"
    with pytest.raises(ConfigError, match="already fp16"):
        quantize(art, tmp_path / "int8", QuantizeConfig(ptq="dynamic"))


def test_bfloat16_is_not_offered():
    from pydantic import ValidationError as PydanticValidationError

    with pytest.raises(PydanticValidationError):
        ExportConfig(dtype="bfloat16")


def test_bfloat16_torch_artifact_exports(tmp_path):
    """A torch-format artifact whose factory and weights are both bfloat16 loads and exports as float32."""
    import torch

    from edgeopt.models.torch_module import save_torch_artifact

    source = tmp_path / "bf16_model.py"
    source.write_text("import torch\n\n"
                      "def build():\n"
                      "    torch.manual_seed(0)\n"
                      "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).to(torch.bfloat16)\n")
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).to(torch.bfloat16)
    src = save_torch_artifact(module, tmp_path / "torch", factory="bf16_model:build", source_file=source,
                              task="image-classification", io=digits_io(), labels=[str(i) for i in range(10)])
    art = export(src, tmp_path / "onnx", ExportConfig(check_samples=4))
    assert (art.manifest.model.source_dtype, art.manifest.model.dtype) == ("bfloat16", "float32")
    assert _initializer_types(art) == {"FLOAT"}


# --- architectures with their own config names ----------------------------------------------------

@pytest.fixture(scope="module")
def distilbert(tmp_path_factory) -> Path:
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    tok = _tokenizer()
    d = tmp_path_factory.mktemp("distilbert") / "cls"
    cfg = DistilBertConfig(vocab_size=len(tok), dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                           max_position_embeddings=128, num_labels=2, architectures=["DistilBertForSequenceClassification"])
    DistilBertForSequenceClassification(cfg).eval().save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_distilbert_fuses_with_its_sizes_read_through_autoconfig(tmp_path, distilbert):
    art = export(distilbert, tmp_path / "onnx", ExportConfig(check_samples=4))
    opt = art.manifest.model.optimization
    assert opt["level"] == "transformer-fusion" and opt["fused_ops"]["Attention"] == 2
    assert [t.name for t in art.manifest.io.inputs] == ["input_ids", "attention_mask"]


def test_distilbert_feature_extraction_width_is_its_dim(distilbert):
    from edgeopt.models.hf import adopt_hf_folder

    assert adopt_hf_folder(distilbert, task="feature-extraction").manifest.io.outputs[0].shape == ["batch", 32]


def test_token_type_ids_only_where_the_model_embeds_token_types():
    import transformers

    from edgeopt.models.architectures import text_input_names

    with_types = ["input_ids", "attention_mask", "token_type_ids"]
    assert text_input_names(transformers.BertConfig()) == with_types
    assert text_input_names(transformers.AlbertConfig()) == with_types
    for cfg in (transformers.RobertaConfig(type_vocab_size=1), transformers.DebertaV2Config(),
                transformers.DistilBertConfig(), transformers.MPNetConfig(), transformers.ModernBertConfig()):
        assert text_input_names(cfg) == ["input_ids", "attention_mask"], type(cfg).__name__


def test_roberta_max_length_leaves_out_the_padding_positions(tmp_path):
    """RoBERTa-family position ids start at pad_token_id + 1: a 34-row table embeds 32 tokens. A
    longer limit would index past the table on long inputs (export and serve would fail)."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from edgeopt.models.architectures import max_text_length

    assert max_text_length(RobertaConfig(max_position_embeddings=514)) == 512
    assert max_text_length(transformers_bert(max_position_embeddings=128)) == 128
    torch.manual_seed(0)
    tok = _tokenizer()
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=34, type_vocab_size=1, num_labels=2, pad_token_id=1,
                        architectures=["RobertaForSequenceClassification"])
    d = tmp_path / "roberta"
    RobertaForSequenceClassification(cfg).eval().save_pretrained(d)
    tok.save_pretrained(d)
    assert load_artifact(d).manifest.io.preprocessing.max_length == 32
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"text": "a very long product description " * 40}) + "\n")
    art = export(d, tmp_path / "onnx", ExportConfig(check_data=str(data)))
    assert art.manifest.metrics["numeric_check"]["outputs"]["logits"]["within_tolerance"]


def transformers_bert(**kw):
    import transformers

    return transformers.BertConfig(**kw)


def test_image_size_from_config_without_preprocessor(tmp_path, tiny_vit):
    d = tmp_path / "vit"
    shutil.copytree(tiny_vit, d)
    (d / "preprocessor_config.json").unlink()
    art = load_artifact(d)
    assert art.manifest.io.inputs[0].shape == ["batch", 3, 16, 16]  # ViTConfig(image_size=16)


def test_image_size_is_the_center_crop():
    from edgeopt.models.architectures import image_size

    pre = {"do_center_crop": True, "size": {"height": 256, "width": 256}, "crop_size": {"height": 224, "width": 224}}
    assert image_size(None, pre) == [224, 224]
    assert image_size(None, {"size": {"shortest_edge": 224}}) == [224, 224]


# --- a fusion never fails an export ---------------------------------------------------------------

def test_fusion_error_falls_back_to_basic_graph(tmp_path, tiny_text_classifier, monkeypatch, caplog):
    import onnxruntime.transformers.optimizer as ort_optimizer

    def broken(*args, **kwargs):
        raise AssertionError  # bare, as ONNX Runtime's optimizer raises on DistilBERT's config names

    monkeypatch.setattr(ort_optimizer, "optimize_model", broken)
    with caplog.at_level(logging.WARNING, logger="edgeopt"):
        art = export(tiny_text_classifier, tmp_path / "onnx", ExportConfig(check_samples=4))
    opt = art.manifest.model.optimization
    assert opt["level"] == "basic"
    assert opt["fusion_error"].startswith("AssertionError at test_checkpoints.py:")
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "fusion failed" in warnings[0].getMessage()


def test_cli_fusion_error_is_one_warning_line(tmp_path, tiny_text_classifier):
    script = ("import sys, onnxruntime.transformers.optimizer as o\n"
              "def broken(*a, **k):\n    raise AssertionError\n"
              "o.optimize_model = broken\n"
              "from edgeopt.cli.main import main\n"
              f"main(['export', {str(tiny_text_classifier)!r}, '-o', {str(tmp_path / 'onnx')!r}])\n")
    env = {**os.environ, "EDGEOPT_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bert fusion failed (AssertionError at" in lines[0], proc.stderr
    assert load_artifact(tmp_path / "onnx").manifest.model.optimization["level"] == "basic"


# --- messages say what went wrong -----------------------------------------------------------------

def test_truncated_safetensors_says_truncated(tmp_path, tiny_text_classifier):
    d = tmp_path / "truncated"
    shutil.copytree(tiny_text_classifier, d)
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated or corrupted"):
        export(d, tmp_path / "onnx")


def test_truncated_pytorch_bin_says_truncated(tmp_path, tiny_text_classifier):
    import torch
    from safetensors.torch import load_file

    d = tmp_path / "bin"
    shutil.copytree(tiny_text_classifier, d)
    torch.save(load_file(d / "model.safetensors"), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()
    data = (d / "pytorch_model.bin").read_bytes()
    (d / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="pytorch_model.bin: cannot read the weights .*truncated or corrupted"):
        export(d, tmp_path / "onnx")


def test_unknown_model_type_names_the_architecture(tmp_path, tiny_text_classifier):
    import transformers

    d = tmp_path / "foo"
    shutil.copytree(tiny_text_classifier, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "foo"
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError) as e:
        export(d, tmp_path / "onnx")
    msg = str(e.value)
    assert f"model_type 'foo' is not supported by transformers {transformers.__version__}" in msg
    assert "truncated" not in msg and "corrupted" not in msg


def test_missing_task_head_names_the_architecture(tmp_path, tiny_text_classifier):
    with pytest.raises(InputError, match="no image-classification model for model_type 'bert'") as e:
        export(tiny_text_classifier, tmp_path / "onnx", ExportConfig(task="image-classification"))
    assert "truncated" not in str(e.value)


def test_weights_that_do_not_fit_config_are_not_called_truncated(tmp_path, tiny_text_classifier):
    d = tmp_path / "mismatch"
    shutil.copytree(tiny_text_classifier, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_size"], cfg["intermediate_size"] = 48, 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="cannot load the bert checkpoint with transformers") as e:
        export(d, tmp_path / "onnx")
    assert "truncated" not in str(e.value)


def _graph(path: Path, op: str, dtype: int) -> Path:
    from onnx import helper

    g = helper.make_graph([helper.make_node(op, ["x", "y"], ["z"], name="the_node")], "g",
                          [helper.make_tensor_value_info(n, dtype, [2]) for n in ("x", "y")],
                          [helper.make_tensor_value_info("z", dtype, [2])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_ort_missing_kernel_names_op_and_type(tmp_path):
    from edgeopt.runtime.onnxruntime import open_session

    with pytest.raises(InputError) as e:
        open_session(_graph(tmp_path / "m.onnx", "Add", onnx.TensorProto.BFLOAT16))
    msg = str(e.value)
    assert "has no kernel for op Add" in msg and "bfloat16" in msg and "the_node" in msg
    assert "truncated" not in msg


def test_ort_type_error_names_op_and_type(tmp_path):
    from edgeopt.runtime.onnxruntime import open_session

    with pytest.raises(InputError, match=r"op Add does not accept type tensor\(string\)") as e:
        open_session(_graph(tmp_path / "m.onnx", "Add", onnx.TensorProto.STRING))
    assert "truncated" not in str(e.value)


def test_ort_truncated_file_says_truncated(tmp_path, cls_onnx):
    from edgeopt.runtime.onnxruntime import open_session

    data = (cls_onnx.path / "model.onnx").read_bytes()
    (tmp_path / "m.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated or corrupted"):
        open_session(tmp_path / "m.onnx")

