"""Architecture matrix: tiny random-initialised checkpoints of the architectures users ship, each taken
through export (with its numeric check) -> dynamic int8 quantization -> a one-batch benchmark.

Each checkpoint is an ordinary folder (save_pretrained + tokenizer or preprocessor_config.json),
built from the real transformers class with widths of 32 or less and two layers or stages where
the architecture lets us choose; the whole matrix takes about a minute on 2 cores.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from _support import minilm_dir

IMAGE = 32  # pixels; every vision config below works at 32x32

# name -> (transformers config class, head class, config kwargs); text configs also get the
# tokenizer's vocabulary size and special-token ids.
TEXT = {
    "bert": ("BertConfig", "BertForSequenceClassification", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)),
    "distilbert": ("DistilBertConfig", "DistilBertForSequenceClassification", dict(
        dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=128)),
    "roberta": ("RobertaConfig", "RobertaForSequenceClassification", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
        type_vocab_size=1)),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForSequenceClassification", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=130,
        type_vocab_size=1)),
    # DeBERTa-v3's layout: relative attention with position buckets, no absolute positions, no token types
    "deberta-v2": ("DebertaV2Config", "DebertaV2ForSequenceClassification", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
        relative_attention=True, position_buckets=16, pos_att_type=["p2c", "c2p"], position_biased_input=False,
        norm_rel_ebd="layer_norm", share_att_key=True, type_vocab_size=0, pooler_hidden_size=32)),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification", dict(
        embedding_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128)),
    "albert": ("AlbertConfig", "AlbertForSequenceClassification", dict(
        embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128)),
    "mpnet": ("MPNetConfig", "MPNetForSequenceClassification", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=130)),
    "modernbert": ("ModernBertConfig", "ModernBertForSequenceClassification", dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
        global_attn_every_n_layers=2, local_attention=16)),
}
FEATURES = {  # plain AutoModel checkpoints exported as mean-pooled embedders
    "distilbert-model": ("distilbert", "DistilBertModel"),
    "modernbert-model": ("modernbert", "ModernBertModel"),
}
VISION = {
    "vit": ("ViTConfig", "ViTForImageClassification", dict(
        image_size=IMAGE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)),
    "deit": ("DeiTConfig", "DeiTForImageClassification", dict(
        image_size=IMAGE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)),
    "dinov2": ("Dinov2Config", "Dinov2ForImageClassification", dict(
        image_size=IMAGE, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2)),
    "swin": ("SwinConfig", "SwinForImageClassification", dict(
        image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4)),
    "convnext": ("ConvNextConfig", "ConvNextForImageClassification", dict(
        num_stages=2, hidden_sizes=[16, 32], depths=[1, 1])),
    "resnet": ("ResNetConfig", "ResNetForImageClassification", dict(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")),
    "regnet": ("RegNetConfig", "RegNetForImageClassification", dict(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8)),
    "mobilenet_v2": ("MobileNetV2Config", "MobileNetV2ForImageClassification", dict(
        image_size=IMAGE, depth_multiplier=0.25)),
    "mobilevit": ("MobileViTConfig", "MobileViTForImageClassification", dict(
        image_size=IMAGE, hidden_sizes=[16, 16, 16], neck_hidden_sizes=[8, 8, 16, 16, 16, 16, 32], num_attention_heads=2)),
    "efficientnet": ("EfficientNetConfig", "EfficientNetForImageClassification", dict(
        image_size=IMAGE, width_coefficient=0.125, depth_coefficient=0.25, hidden_dim=160)),  # hidden_dim = 1280 x width
}
LABELS = {0: "neg", 1: "pos", 2: "other"}


def _save_text(d: Path, config_cls: str, model_cls: str, kw: dict, tok) -> None:
    import transformers

    special = {k: tok.convert_tokens_to_ids(getattr(tok, t)) for k, t in
               (("pad_token_id", "pad_token"), ("bos_token_id", "cls_token"), ("eos_token_id", "sep_token"),
                ("cls_token_id", "cls_token"), ("sep_token_id", "sep_token"))}
    cfg = getattr(transformers, config_cls)(vocab_size=len(tok), **special, **kw)
    _save(d, cfg, model_cls)
    tok.save_pretrained(d)


def _save(d: Path, cfg, model_cls: str) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    cfg.architectures = [model_cls]
    if model_cls.endswith("Classification"):
        cfg.id2label, cfg.label2id = LABELS, {v: k for k, v in LABELS.items()}
    model = getattr(transformers, model_cls)(cfg)
    _set_batchnorm_statistics(model, getattr(cfg, "num_channels", None))
    model.eval().save_pretrained(d)


def _set_batchnorm_statistics(model, channels) -> None:
    """Give BatchNorm layers what training gives them: scales near 1 and the running statistics of
    real activations. Some random inits (EfficientNet's, MobileViT's) draw the scales around 0.02
    and keep mean 0 / variance 1, which shrinks activations at every layer until deep nets output
    zeros, and the numeric check would compare zeros with zeros."""
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    with torch.no_grad():
        for m in norms:
            m.weight.fill_(1.0)
            m.bias.zero_()
            m.reset_running_stats()
            m.momentum = None  # a plain average over the batches below
        model.train()
        for _ in range(4):
            model(pixel_values=torch.randn(8, channels, IMAGE, IMAGE))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir())
    root = tmp_path_factory.mktemp("architectures")
    out = {}
    for name, (config_cls, model_cls, kw) in TEXT.items():
        out[name] = root / name
        _save_text(out[name], config_cls, model_cls, kw, tok)
    for name, (arch, model_cls) in FEATURES.items():
        config_cls, _, kw = TEXT[arch]
        out[name] = root / name
        _save_text(out[name], config_cls, model_cls, kw, tok)
    for name, (config_cls, model_cls, kw) in VISION.items():
        out[name] = root / name
        _save(out[name], getattr(transformers, config_cls)(num_labels=3, **kw), model_cls)
        (out[name] / "preprocessor_config.json").write_text(json.dumps({
            "size": {"height": IMAGE, "width": IMAGE}, "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225], "rescale_factor": 1 / 255}))
    return out


@pytest.mark.parametrize("name", [*TEXT, *FEATURES, *VISION])
def test_export_quantize_bench(tmp_path, checkpoints, name):
    from edgeopt.bench.core import BenchConfig, bench
    from edgeopt.models.architectures import load_config, ort_fusion_type
    from edgeopt.stages.export import ExportConfig, export
    from edgeopt.stages.quantize import QuantizeConfig, quantize

    onnx_art = export(checkpoints[name], tmp_path / "onnx", ExportConfig(check_samples=8))
    check = onnx_art.manifest.metrics["numeric_check"]["outputs"]
    assert all(rec["within_tolerance"] for rec in check.values())
    # The fusion table holds: listed architectures fuse without error and keep their numerics.
    opt = onnx_art.manifest.model.optimization
    if ort_fusion_type(load_config(checkpoints[name])):
        assert opt["level"] == "transformer-fusion" and opt["fused_ops"], opt
    else:
        assert opt == {"level": "basic"}
    int8 = quantize(onnx_art, tmp_path / "int8", QuantizeConfig(ptq="dynamic", eval_samples=8))
    assert int8.manifest.model.precision == "int8"
    report = bench([int8], BenchConfig(batch_sizes=[1], runs=2, warmup=1, eval_samples=4))
    assert [r.batch_size for r in report.rows] == [1] and report.rows[0].p50_ms > 0
