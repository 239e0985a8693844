"""resize_bilinear (numpy) equals torch's antialiased bilinear interpolate, which Preprocessor used before."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeopt.models.imageops import resize_bilinear

torch = pytest.importorskip("torch")


def _torch_resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x))
    return torch.nn.functional.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True).numpy()


SHAPES = [  # (N, C, H, W) -> (h, w)
    ((2, 3, 8, 8), (224, 224)),  # upsampling
    ((2, 3, 224, 224), (32, 32)),  # downsampling, 7x
    ((1, 1, 28, 28), (28, 28)),  # identity
    ((1, 3, 28, 28), (28, 28)),
    ((2, 3, 37, 91), (64, 20)),  # non-square, up in one axis and down in the other
    ((1, 1, 100, 30), (7, 77)),
    ((3, 1, 17, 13), (16, 14)),  # slightly smaller
    ((1, 3, 5, 3), (224, 224)),
    ((1, 3, 480, 640), (224, 224)),  # a camera frame
    ((1, 1, 224, 224), (1, 1)),
]


@pytest.mark.parametrize("src,dst", SHAPES, ids=[f"{s[2]}x{s[3]}c{s[1]}->{d[0]}x{d[1]}" for s, d in SHAPES])
def test_matches_torch(src, dst):
    rng = np.random.default_rng(sum(src) + sum(dst))
    x = rng.random(src, dtype=np.float32)
    got = resize_bilinear(x, *dst)
    want = _torch_resize(x, *dst)
    assert got.dtype == np.float32 and got.shape == want.shape == (src[0], src[1], *dst)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # raw pixel values (0..255), as Preprocessor resizes them before scaling
    x255 = np.round(x * 255)
    np.testing.assert_allclose(resize_bilinear(x255, *dst), _torch_resize(x255, *dst), rtol=1e-5, atol=1e-3)


def test_identity_is_exact():
    x = np.random.default_rng(0).random((2, 3, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(resize_bilinear(x, 28, 28), x)


def test_not_plain_bilinear():
    """Downsampling is antialiased: the check would notice a plain (non-antialiased) bilinear resize."""
    x = np.random.default_rng(1).random((1, 1, 224, 224), dtype=np.float32)
    t = torch.from_numpy(x)
    plain = torch.nn.functional.interpolate(t, size=(32, 32), mode="bilinear", align_corners=False, antialias=False).numpy()
    assert np.abs(resize_bilinear(x, 32, 32) - plain).max() > 1e-2


def test_preprocessor_image_matches_torch_path():
    """Preprocessor.image (NHWC input, resize, scale, normalise) equals the torch-based computation."""
    from edgeopt.artifact import (
        Artifact,
        ImagePreprocessing,
        IOSpec,
        Manifest,
        TensorSpec,
    )
    from edgeopt.models.preprocess import Preprocessor

    spec = ImagePreprocessing(size=[32, 48], channels=3, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
    io = IOSpec(inputs=[TensorSpec(name="pixel_values", dtype="float32", shape=["batch", 3, 32, 48])],
                outputs=[TensorSpec(name="logits", dtype="float32", shape=["batch", 2])], preprocessing=spec)
    pre = Preprocessor(Artifact(Path("."), Manifest(format="onnx", task="image-classification", labels=["a", "b"], io=io)))
    imgs = np.random.default_rng(2).integers(0, 256, size=(2, 100, 60, 3)).astype(np.uint8)
    got = pre(imgs)["pixel_values"]
    x = _torch_resize(imgs.astype(np.float32).transpose(0, 3, 1, 2), 32, 48) * spec.scale
    want = (x - np.reshape(spec.mean, (1, -1, 1, 1))) / np.reshape(spec.std, (1, -1, 1, 1))
    np.testing.assert_allclose(got, want.astype(np.float32), rtol=0, atol=1e-4)


def test_rejects_non_nchw():
    with pytest.raises(ValueError):
        resize_bilinear(np.zeros((3, 8, 8), np.float32), 4, 4)
