"""Loading weights whose shapes differ from the freshly built module (edgeopt/models/resize.py)."""
from __future__ import annotations

import pytest

from edgeopt.models.resize import load_resized


def _net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.LayerNorm(8), nn.Linear(8, 5))


def _smaller():
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.LayerNorm(3), nn.Linear(3, 5))


def test_saved_shapes_win():
    import torch

    small = _smaller()
    with torch.no_grad():
        small[1].running_mean.uniform_(-1, 1)
        small[1].running_var.uniform_(0.5, 2)
    small.eval()
    net = _net()
    changed = load_resized(net, small.state_dict())
    assert changed == ["0", "1", "5", "6"]
    assert (net[0].out_channels, net[1].num_features, net[5].normalized_shape, net[6].in_features) == (3, 3, (3,), 3)
    net.eval()
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(net(x), small(x))


def test_missing_weights_are_an_error():
    state = _smaller().state_dict()
    del state["6.bias"]
    with pytest.raises(ValueError, match="do not fit"):
        load_resized(_net(), state)


def test_unexpected_weights_are_an_error():
    import torch

    state = _net().state_dict()
    state["7.weight"] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="unexpected"):
        load_resized(_net(), state)


def test_unsupported_module_type():
    import torch
    from torch import nn

    net = nn.Sequential(nn.Conv1d(2, 4, 3))
    with pytest.raises(ValueError, match="cannot resize Conv1d"):
        load_resized(net, {"0.weight": torch.zeros(3, 2, 3), "0.bias": torch.zeros(3)})


def test_torch_artifact_with_weights_of_another_model(tmp_path, digits_torch):
    """A torch artifact whose weights do not fit its factory is an InputError, not a crash."""
    import shutil

    import torch
    from safetensors.torch import save_file

    from edgeopt.artifact import finalize, load_artifact
    from edgeopt.errors import InputError
    from edgeopt.models import load_torch_model

    art_dir = tmp_path / "broken"
    shutil.copytree(digits_torch, art_dir)
    art = load_artifact(art_dir)
    save_file({"features.0.weight": torch.zeros(4, 1, 3, 3)}, art_dir / "weights.safetensors")
    finalize(art_dir, art.manifest)
    with pytest.raises(InputError, match="do not fit"):
        load_torch_model(load_artifact(art_dir))
