"""Optimization profiles: the [min, opt, max] shape of every engine input.

TensorRT builds one kernel plan per profile and refuses inputs outside it. Profiles are derived
from the IO spec's named dynamic axes ("batch", "sequence"), the defaults coming from the target
profile (``profiles:`` in targets/*.yaml), and each input can be overridden with
``--shapes NAME:MIN:OPT:MAX`` (shapes as ``1x128``), Polygraphy's and trtexec's notation.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence

from ..errors import ConfigError, InputError

Shape = list[int]
Profile = dict[str, list[Shape]]  # input name -> [min, opt, max]

# named dynamic axis -> the ProfileSpec field holding its [min, opt, max]
AXES = {"batch": "batch", "sequence": "sequence"}
DEFAULT_AXES = {"batch": [1, 8, 32], "sequence": [1, 128, 512]}


def _dims(text: str, spec: str) -> Shape:
    if not re.fullmatch(r"\d+(x\d+)*", text):
        raise ConfigError(f"--shapes '{spec}': '{text}' is not a shape; write dimensions joined by x, e.g. 8x128")
    dims = [int(d) for d in text.split("x")]
    if any(d < 1 for d in dims):
        raise ConfigError(f"--shapes '{spec}': dimensions must be at least 1")
    return dims


def parse_shapes(specs: Iterable[str]) -> Profile:
    """``NAME:MIN:OPT:MAX`` (e.g. ``input_ids:1x1:8x128:32x512``) -> {name: [min, opt, max]}."""
    out: Profile = {}
    for spec in specs:
        parts = spec.rsplit(":", 3)
        if len(parts) != 4 or not parts[0]:
            raise ConfigError(f"--shapes '{spec}': write NAME:MIN:OPT:MAX, e.g. input_ids:1x1:8x128:32x512")
        name, *shapes = parts
        lo, opt, hi = (_dims(s, spec) for s in shapes)
        if not (len(lo) == len(opt) == len(hi)):
            raise ConfigError(f"--shapes '{spec}': min, opt and max must have the same rank")
        if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise ConfigError(f"--shapes '{spec}': every dimension needs min <= opt <= max")
        if name in out:
            raise ConfigError(f"--shapes gives input '{name}' twice")
        out[name] = [lo, opt, hi]
    return out


def derive_profile(inputs: Sequence, axes: Optional[dict[str, list[int]]] = None,
                   overrides: Optional[Profile] = None) -> Profile:
    """The profile of every input: fixed dimensions as they are, named dynamic axes from ``axes``
    (the target's [min, opt, max] per axis name), inputs in ``overrides`` exactly as given.

    ``inputs`` are the manifest's TensorSpecs (name, shape with int or axis-name entries)."""
    axes = {**DEFAULT_AXES, **(axes or {})}
    overrides = dict(overrides or {})
    names = [t.name for t in inputs]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ConfigError(f"--shapes names input(s) {', '.join(unknown)} the model does not have; its inputs are {', '.join(names)}")
    out: Profile = {}
    for t in inputs:
        if t.name in overrides:
            given = overrides[t.name]
            if len(given[0]) != len(t.shape):
                raise ConfigError(f"--shapes {t.name}: rank {len(given[0])} differs from the input's rank {len(t.shape)} "
                                  f"(shape {_show(t.shape)})")
            for i, d in enumerate(t.shape):
                if isinstance(d, int) and any(s[i] != d for s in given):
                    raise ConfigError(f"--shapes {t.name}: dimension {i} is fixed at {d} in the model; give {d} for min, opt and max")
            out[t.name] = [list(s) for s in given]
            continue
        lo, opt, hi = [], [], []
        for d in t.shape:
            if isinstance(d, int):
                lo.append(d), opt.append(d), hi.append(d)
            elif d in axes:
                a, b, c = axes[d]
                lo.append(a), opt.append(b), hi.append(c)
            else:
                raise ConfigError(f"input '{t.name}' has dynamic axis '{d}' with no default range; give it with "
                                  f"--shapes {t.name}:MIN:OPT:MAX (e.g. {t.name}:{_example(t.shape)})")
        out[t.name] = [lo, opt, hi]
    _same_axis_consistent(inputs, out)
    return out


def _same_axis_consistent(inputs: Sequence, profile: Profile) -> None:
    """Inputs sharing a named axis (input_ids and attention_mask share batch and sequence) must get
    the same range for it, or TensorRT rejects every real input at run time."""
    seen: dict[str, tuple[str, list[int]]] = {}
    for t in inputs:
        for i, d in enumerate(t.shape):
            if isinstance(d, str):
                rng = [profile[t.name][k][i] for k in range(3)]
                if d in seen and seen[d][1] != rng:
                    other, orng = seen[d]
                    raise ConfigError(f"axis '{d}' gets range {rng} on input '{t.name}' but {orng} on '{other}'; "
                                      "inputs sharing an axis need the same min/opt/max")
                seen.setdefault(d, (t.name, rng))


def _show(shape: Sequence) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _example(shape: Sequence) -> str:
    lo = "x".join("1" if isinstance(d, str) else str(d) for d in shape)
    opt = "x".join("8" if isinstance(d, str) else str(d) for d in shape)
    hi = "x".join("32" if isinstance(d, str) else str(d) for d in shape)
    return f"{lo}:{opt}:{hi}"


def format_profile(profile: Profile) -> str:
    """trtexec's notation, for messages and `edgeopt inspect`: name:1x1..8x128..32x512."""
    return ", ".join(f"{n}:" + "..".join("x".join(map(str, s)) for s in shapes) for n, shapes in profile.items())


def shape_args(profile: Profile) -> list[str]:
    """The profile as ``--shapes`` values (NAME:MIN:OPT:MAX), e.g. to rebuild an engine with it."""
    return [f"{n}:" + ":".join("x".join(map(str, s)) for s in shapes) for n, shapes in profile.items()]


def check_within(profile: Profile, shapes: dict[str, Sequence[int]]) -> None:
    """Refuse input shapes outside the engine's profile, naming the input, the dimension and the range."""
    for name, shape in shapes.items():
        if name not in profile:
            continue
        lo, _, hi = profile[name]
        if len(shape) != len(lo):
            raise InputError(f"input '{name}' has rank {len(shape)} but the engine takes rank {len(lo)}")
        for i, (d, a, b) in enumerate(zip(shape, lo, hi)):
            if not a <= d <= b:
                raise InputError(f"input '{name}' has shape {_show(shape)}: dimension {i} = {d} is outside the engine's "
                                 f"profile [{a}, {b}]; send smaller batches or shorter inputs, or rebuild the engine "
                                 f"with --shapes {name}:{'x'.join(map(str, [min(x, y) for x, y in zip(lo, shape)]))}:"
                                 f"{'x'.join(map(str, profile[name][1]))}:"
                                 f"{'x'.join(map(str, [max(x, y) for x, y in zip(hi, shape)]))}")


def ort_profile_options(profile: Profile) -> dict[str, str]:
    """The same profile as ONNX Runtime's TensorRT EP options (trt_profile_{min,opt,max}_shapes)."""
    def fmt(k: int) -> str:
        return ",".join(f"{n}:" + "x".join(map(str, shapes[k])) for n, shapes in profile.items())

    return {"trt_profile_min_shapes": fmt(0), "trt_profile_opt_shapes": fmt(1), "trt_profile_max_shapes": fmt(2)}
