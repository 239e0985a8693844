"""Where the prunable parts of an architecture live. One small class per family; generic code
(prune, distill) asks the layout instead of branching on model types."""
from __future__ import annotations

from typing import Optional


class BertLayout:
    """BERT-style encoders (BERT, RoBERTa, XLM-R, ELECTRA): encoder.layer[i].attention.self.{query,key,value},
    attention.output.dense, intermediate.dense, output.dense."""

    model_types = ("bert", "roberta", "xlm-roberta", "electra")

    def __init__(self, hf_model):
        self.model = hf_model
        self.base = hf_model.base_model

    def layers(self):
        return self.base.encoder.layer

    def set_layers(self, layers) -> None:
        import torch

        self.base.encoder.layer = torch.nn.ModuleList(layers)
        self.model.config.num_hidden_layers = len(layers)

    def head_dim(self, layer) -> int:
        return layer.attention.self.attention_head_size

    def qkv(self, layer):
        s = layer.attention.self
        return s, ("query", "key", "value")

    def attn_out(self, layer):
        return layer.attention.output, "dense"

    def ffn_in(self, layer):
        return layer.intermediate, "dense"

    def ffn_out(self, layer):
        return layer.output, "dense"


def layout_for(hf_model) -> Optional[BertLayout]:
    mt = getattr(getattr(hf_model, "config", None), "model_type", None)
    for cls in (BertLayout,):
        if mt in cls.model_types:
            return cls(hf_model)
    return None
