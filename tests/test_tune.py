"""`edgeopt tune`: int8 variants searched and timed against fp32, the fastest within the budget written."""
from __future__ import annotations

import json
import re
import shutil
import tempfile
import types
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from pydantic import ValidationError as PydanticValidationError

from _support import TEXT_ROWS, write_jsonl
from edgeopt.artifact import load_artifact
from edgeopt.errors import ConfigError, ValidationError
from edgeopt.stages.quantize import QuantizeConfig, quantize
from edgeopt.tuning import Trial, TuneConfig, Variant, tune
from edgeopt.tuning.measure import geomean
from edgeopt.tuning.pareto import front, table
from edgeopt.tuning.search import PER_CHANNEL_OPS
from edgeopt.tuning.search import FLOAT_NODE_STEPS, TIE, TuneResult
from test_cli import PNG_MAGIC, assert_clean_failure, cli

# small and quick: a few samples, one timing round, two batch sizes, dynamic variants only
QUICK = dict(rounds=1, batch_sizes=[1, 2], static=False, max_float_nodes=1)
MIXED = re.compile(r"per-tensor, (\d+) per-channel")
FLOAT_NODES = re.compile(r"(\d+) float nodes?\b")


def _config(data, cache, **kw) -> TuneConfig:
    return TuneConfig(**{"data": str(data), "cache_dir": str(cache), "eval_samples": 16, **QUICK, **kw})


def _tree(p: Path) -> list:
    return sorted((str(f.relative_to(p)), f.stat().st_size) for f in p.rglob("*"))


class _Sandbox:
    """A private temporary directory (tempfile's) and an empty current directory, both watched:
    tune must make its temporary folder there while it runs and leave nothing behind."""

    def __init__(self, root: Path, mp: pytest.MonkeyPatch):
        self.tmp, self.cwd = root / "tmp", root / "cwd"
        self.tmp.mkdir(parents=True)
        self.cwd.mkdir()
        mp.setattr(tempfile, "tempdir", str(self.tmp))
        mp.chdir(self.cwd)
        self.seen: set[str] = set()
        self.lines: list[str] = []

    def progress(self, line: str) -> None:
        self.lines.append(line)
        self.seen |= {p.name for p in self.tmp.iterdir()}

    def assert_clean(self) -> None:
        assert any(n.startswith("edgeopt-tune-") for n in self.seen), self.seen  # it did work in the temp dir
        assert list(self.tmp.iterdir()) == [] and list(self.cwd.iterdir()) == []

    def reported(self) -> list[str]:
        """The per-variant progress lines ('[3] dynamic, per-channel: ...')."""
        return [ln for ln in self.lines if re.match(r"\[\d+\] ", ln)]


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> _Sandbox:
    return _Sandbox(tmp_path / "sandbox", monkeypatch)


@pytest.fixture(scope="module")
def unlabelled_jsonl(tmp_path_factory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("tune-data") / "unlabelled.jsonl", [{"text": t} for t, _ in TEXT_ROWS])


# --- the whole search on the tiny classifier, with a loose accuracy budget -----------------------

LOOSE_DROP = 5.0


@pytest.fixture(scope="module")
def loose(tmp_path_factory, cls_onnx, text_jsonl):
    """One tune of the classifier (every labelled sample, accuracy drop <= 5 points), with what was
    around it before and after."""
    root = tmp_path_factory.mktemp("tune-loose")
    cache = root / "cache"
    cfg = _config(text_jsonl, cache, eval_samples=40, max_accuracy_drop=LOOSE_DROP)
    beside = cls_onnx.path.parent
    before = _tree(beside)
    with pytest.MonkeyPatch.context() as mp:
        box = _Sandbox(root, mp)
        res = tune(cls_onnx, root / "out", cfg, on_progress=box.progress)
    return types.SimpleNamespace(res=res, out=root / "out", cache=cache, cfg=cfg, box=box, before=before,
                                 after=_tree(beside), beside=beside)


def test_writes_the_fastest_variant_within_the_budget(loose, cls_onnx):
    res = loose.res
    art = load_artifact(loose.out)  # verifies every file against the manifest
    m = art.manifest
    assert res.artifact == str(loose.out.resolve())
    assert m.format == "onnx" and m.model.precision == "int8" and m.task == cls_onnx.manifest.task
    assert m.lineage[-1].stage == "tune" and m.lineage[-1].parent_hash == cls_onnx.manifest.digest()
    assert m.model.quantization["mode"] == "dynamic" and m.model.target == "x86"

    rec = m.metrics["tune"]
    assert rec["metric"] == res.metric == "accuracy" and rec["budget"] == res.budget == "accuracy drop <= 5 points"
    assert rec["stopped"] is None and res.stopped is None
    # every tried variant is recorded (and was reported while it ran), the fp32 reference first
    labels = [t["label"] for t in rec["trials"]]
    assert labels == [t.label for t in res.trials] and len(loose.box.reported()) == len(labels)
    assert labels[:3] == ["fp32 (reference)", "dynamic, per-tensor", "dynamic, per-channel"]
    keys = [Variant.model_validate(t["variant"]).key() for t in rec["trials"]]
    assert len(set(keys)) == len(keys)
    # both granularities meet a loose budget: nothing that only buys back quality is tried, and no static
    assert not [x for x in labels if MIXED.search(x) or FLOAT_NODES.search(x) or x.startswith("static")]
    assert any("float MatMul" in x for x in labels)  # op types kept in float
    assert any("dynamic_block_base=4" in x for x in labels) and any("allow_spinning=0" in x for x in labels)
    # the fused residual+LayerNorm split back (the classifier's export has SkipLayerNormalization)
    assert any("SkipLayerNorm unfused" in x for x in labels)
    # OpenVINO on the fp32 graph, where it is installed (the dev install has it)
    from edgeopt._optional import installed

    assert ("OpenVINO f32 (fp32 graph)" in labels) == installed("openvino")

    ref = res.trials[0]
    ref_acc = ref.quality["accuracy"]
    assert ref.variant.ptq == "fp32" and not ref.meets_budget and ref.speedup == 1.0
    assert set(ref.latency) == {1, 2}  # fp32's own times: the median over the interleaved runs
    for t in res.trials[1:]:
        assert t.error is None and not t.cached and t.size_bytes
        assert t.size_bytes < ref.size_bytes if t.variant.ptq != "float" else t.size_bytes == ref.size_bytes
        assert set(t.latency) == {1, 2} and all(v["ms"] > 0 and v["ref_ms"] > 0 for v in t.latency.values())
        assert t.speedup == pytest.approx(geomean(v["speedup"] for v in t.latency.values()))
        assert t.accuracy_drop_points == pytest.approx((ref_acc - t.quality["accuracy"]) * 100)
        assert t.meets_budget == (t.accuracy_drop_points <= LOOSE_DROP)

    # the chosen one: within the budget, and the fastest of those (speeds within TIE are a tie)
    chosen = res.chosen
    assert rec["chosen"] == chosen.variant.key() and rec["chosen"] in keys
    assert chosen.meets_budget and chosen.accuracy_drop_points <= LOOSE_DROP
    within = [t for t in res.trials if t.meets_budget]
    assert chosen.speedup >= max(t.speedup for t in within) * (1 - TIE) - 1e-9
    # ...and that is what was written: its quantization, its session options
    q = m.model.quantization
    assert q["per_channel"] == chosen.variant.per_channel
    assert q.get("excluded_op_types", []) == chosen.variant.exclude_op_types
    assert m.model.session_config == chosen.variant.session_config
    assert q.get("rewrites", {}).keys() == set(chosen.variant.rewrites)

    # the report, inside the artifact
    md = (loose.out / "report" / "tune.md").read_text()
    assert res.report == str(loose.out.resolve() / "report" / "tune.md")
    assert f"**{chosen.label}**" in md and "accuracy drop <= 5 points" in md
    assert all(t.label in md for t in res.trials) and "![Pareto front](pareto.png)" in md
    assert (loose.out / "report" / "pareto.png").read_bytes().startswith(PNG_MAGIC)
    assert {"report/tune.md", "report/pareto.png", "model.onnx"} <= set(m.files)
    # on the front: only trials nothing beats on both axes
    assert [t.label for t in res.trials if t.on_front] == [t["label"] for t in rec["trials"] if t["on_front"]]
    assert any(t.on_front for t in res.trials)


def test_the_written_model_runs_and_agrees_with_its_manifest(loose, cls_onnx, text_jsonl):
    from edgeopt.data import load_dataset
    from edgeopt.models.preprocess import Preprocessor
    from edgeopt.runtime import load_runtime

    art = load_artifact(loose.out)
    pre = Preprocessor(art)
    data = load_dataset(text_jsonl, kind=pre.kind)
    assert len(data) == 40

    def argmax(a):
        rt = load_runtime(a)
        return np.concatenate([rt.run(pre(data.samples[i : i + 8]))[0] for i in range(0, len(data), 8)]).argmax(-1)

    got, ref = argmax(art), argmax(cls_onnx)
    labels = data.label_indices(art.manifest.labels)
    ev = art.manifest.metrics["eval"]
    assert ev["samples"] == 40
    assert ev["accuracy"] == pytest.approx(float((got == labels).mean()))
    assert ev["parent_accuracy"] == pytest.approx(float((ref == labels).mean()))
    assert ev["top1_agreement"] == pytest.approx(float((got == ref).mean()))
    # the rebuilt variant measures what the search measured
    chosen = loose.res.chosen
    assert chosen.quality["accuracy"] == pytest.approx(ev["accuracy"])
    assert chosen.quality["top1_agreement"] == pytest.approx(ev["top1_agreement"])
    assert ev["accuracy_drop_points"] <= LOOSE_DROP


def test_nothing_left_behind(loose, cls_onnx):
    loose.box.assert_clean()  # its temporary folder was used, and removed; the current directory untouched
    assert loose.after == loose.before  # nothing written into or next to the input artifact
    cached = list((loose.cache / "tune").glob("*/*.json"))
    assert len(cached) >= len(loose.res.trials)  # every measured variant went to the given cache


# --- resume ------------------------------------------------------------------------------------

def test_a_rerun_resumes_from_the_cache(loose, cls_onnx, text_jsonl, tmp_path):
    files = sorted((loose.cache / "tune").rglob("*"))
    # even a budget too small to measure anything: what is cached costs no time
    res = tune(cls_onnx, tmp_path / "again", loose.cfg.model_copy(update={"budget_minutes": 0.01}))
    assert [t.label for t in res.trials] == [t.label for t in loose.res.trials]
    assert all(t.cached for t in res.trials)  # the fp32 reference too: its outputs are recomputed, not timed
    assert res.stopped is None and sorted((loose.cache / "tune").rglob("*")) == files  # nothing measured anew
    for a, b in zip(res.trials[1:], loose.res.trials[1:]):
        assert (a.speedup, a.quality, a.latency) == (b.speedup, b.quality, b.latency)
    assert res.chosen.variant == loose.res.chosen.variant
    art = load_artifact(tmp_path / "again")
    assert all(t["cached"] for t in art.manifest.metrics["tune"]["trials"])

    # the cache is keyed by the data's contents: the same bytes elsewhere hit it, other bytes do not
    same = tmp_path / "copy.jsonl"
    shutil.copyfile(text_jsonl, same)
    quick = dict(max_float_nodes=0)
    res = tune(cls_onnx, tmp_path / "same-data", loose.cfg.model_copy(update={"data": str(same), **quick}))
    assert all(t.cached for t in res.trials)
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": t + " (refurbished)", "label": lab} for t, lab in TEXT_ROWS])
    res = tune(cls_onnx, tmp_path / "other-data", loose.cfg.model_copy(update={"data": str(other), **quick}))
    assert res.trials and not any(t.cached for t in res.trials)
    # ...and by the target
    res = tune(cls_onnx, tmp_path / "rpi5", loose.cfg.model_copy(update={"target": "rpi5", **quick}))
    assert res.trials and not any(t.cached for t in res.trials)
    assert load_artifact(tmp_path / "rpi5").manifest.model.target == "rpi5"
    # the Pi's own session option (no spinning) is not tried again as a variant
    assert not [t for t in res.trials if "allow_spinning" in t.label]


# --- the time budget -----------------------------------------------------------------------------

def test_a_tiny_time_budget_stops_the_search(cls_onnx, text_jsonl, tmp_path, sandbox):
    """0.6 s is spent in setting up on a slow machine, or after a few variants on a fast one: either
    the best variant measured so far is written, or nothing is, with one clean error."""
    out = tmp_path / "out"
    cfg = _config(text_jsonl, tmp_path / "cache", budget_minutes=0.01, max_accuracy_drop=LOOSE_DROP)
    try:
        res = tune(cls_onnx, out, cfg, on_progress=sandbox.progress)
    except ValidationError as e:
        assert "no int8 variant met the budget" in str(e) and "--budget-minutes" in str(e)
        assert not out.exists() and not list(tmp_path.glob(".out.*"))
        stopped = None
    else:
        stopped = res.stopped
        assert stopped and res.chosen is not None and res.chosen.meets_budget
        art = load_artifact(out)
        assert art.manifest.metrics["tune"]["stopped"] == stopped
        assert f"The search stopped early: {stopped}." in (out / "report" / "tune.md").read_text()
    n = len(sandbox.reported())
    msg = f"the 0.01-minute budget was spent after {n} variants"
    assert f"stopping: {msg}" in sandbox.lines and stopped in (None, msg)
    assert list(sandbox.tmp.iterdir()) == [] and list(sandbox.cwd.iterdir()) == []


def test_the_time_budget_spent_midway_writes_the_best_so_far(loose, cls_onnx, text_jsonl, tmp_path, monkeypatch):
    """With a clock that moves one second each time the search reads it, a 12-second budget runs out
    after a few variants, whatever the machine."""
    from edgeopt.tuning import search

    ticks = iter(range(10**6))
    monkeypatch.setattr(search, "time", types.SimpleNamespace(monotonic=lambda: float(next(ticks))))
    out = tmp_path / "out"
    res = tune(cls_onnx, out, loose.cfg.model_copy(update={"budget_minutes": 0.2, "cache_dir": str(tmp_path / "cache")}))
    n = len(res.trials)
    assert res.stopped == f"the 0.2-minute budget was spent after {n} variants"
    # the variants in the order a full search tries them, cut short
    assert 3 <= n < len(loose.res.trials)
    assert [t.label for t in res.trials] == [t.label for t in loose.res.trials[:n]]
    assert res.chosen in res.trials and res.chosen.meets_budget
    art = load_artifact(out)
    assert art.manifest.metrics["tune"]["stopped"] == res.stopped
    assert len(art.manifest.metrics["tune"]["trials"]) == n
    assert f"The search stopped early: {res.stopped}." in (out / "report" / "tune.md").read_text()


# --- the quality levers: mixed granularity and nodes in float --------------------------------------

def _weight_granularity(path: Path) -> dict[str, bool]:
    """Quantized node (by its float name) -> whether its weight scale is per channel."""
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out: dict[str, bool] = {}
    for n in model.graph.node:
        if "_quant" not in n.name:
            continue
        name = n.name.split("_quant")[0]
        scales = [inits[i].size for i in n.input if i in inits and i.endswith("_scale")]
        if scales and n.op_type in ("QAttention", "Mul"):  # MatMulInteger's weight scale sits in its scales Mul
            out[name] = out.get(name, False) or max(scales) > 1
    return out


def test_a_strict_budget_tries_mixed_granularity_and_float_nodes(emb_onnx, text_jsonl, tmp_path, sandbox):
    # the fidelity of int8 with one granularity everywhere; the budget: halfway between it and fp32
    base = {}
    for pc in (False, True):
        q = quantize(emb_onnx, tmp_path / f"pc-{pc}", QuantizeConfig(ptq="dynamic", per_channel=pc, eval_data=str(text_jsonl),
                                                                     eval_samples=16))
        base[pc] = q.manifest.metrics["eval"]["cosine_min"]
    need = 1 - (1 - max(base.values())) / 2
    out = tmp_path / "out"
    res = tune(emb_onnx, out, _config(text_jsonl, tmp_path / "cache", min_agreement=need, max_float_nodes=2),
               on_progress=sandbox.progress)
    sandbox.assert_clean()
    assert res.metric == "agreement" and res.budget == f"cosine min >= {need:g}"
    by = {t.label: t for t in res.trials}
    for label, pc in (("dynamic, per-tensor", False), ("dynamic, per-channel", True)):
        assert not by[label].meets_budget
        assert by[label].quality["cosine_min"] == pytest.approx(base[pc], abs=1e-7)  # what quantize measures
    assert all("top1_agreement" not in t.quality for t in res.trials)  # an embedder has no classes

    # mixed granularity: per-tensor everywhere but the N most sensitive nodes, N = 1, 2, 4, ...
    mixed = [t for t in res.trials if MIXED.search(t.label)]
    assert mixed, [t.label for t in res.trials]
    sizes = [len(t.variant.per_channel_nodes) for t in mixed]
    assert sizes == list(FLOAT_NODE_STEPS[: len(sizes)]) and len(sizes) >= 2
    assert all(not t.variant.per_channel and int(MIXED.search(t.label)[1]) == len(t.variant.per_channel_nodes)
               for t in mixed)
    # the N most sensitive nodes in float, N <= --max-float-nodes, on each granularity that missed
    floats = [t for t in res.trials if FLOAT_NODES.search(t.label)]
    grid = {(len(t.variant.exclude_nodes), t.variant.per_channel) for t in floats}
    assert grid == {(1, False), (1, True), (2, False), (2, True)}
    # both levers follow one sensitivity ranking; mixed granularity takes only the nodes with weights that
    # can have per-channel scales (an embedding lookup has none)
    kinds = {n.name: n.op_type for n in onnx.load(str(emb_onnx.path / "model.onnx")).graph.node}
    ranking = mixed[-1].variant.per_channel_nodes
    assert all(kinds[n] in PER_CHANNEL_OPS for n in ranking)
    widest = max(floats, key=lambda t: len(t.variant.exclude_nodes)).variant.exclude_nodes
    assert all(t.variant.exclude_nodes == widest[: len(t.variant.exclude_nodes)] for t in floats)
    weighted = [n for n in widest if kinds[n] in PER_CHANNEL_OPS]
    assert weighted == ranking[: len(weighted)]
    assert all(t.variant.per_channel_nodes == ranking[: len(t.variant.per_channel_nodes)] for t in mixed)

    chosen = res.chosen
    assert chosen is not None and chosen.meets_budget and chosen.quality["agreement"] >= need
    assert chosen.label not in ("dynamic, per-tensor", "dynamic, per-channel")
    art = load_artifact(out)
    assert art.manifest.metrics["eval"]["cosine_min"] == pytest.approx(chosen.quality["cosine_min"], abs=1e-7)
    assert art.manifest.model.quantization.get("excluded_nodes", []) == chosen.variant.exclude_nodes

    # a mixed variant rebuilt by quantize: the listed nodes per channel, every other one per tensor
    nodes = mixed[-1].variant.per_channel_nodes
    q = quantize(emb_onnx, tmp_path / "mixed", QuantizeConfig(ptq="dynamic", per_channel=False, per_channel_nodes=nodes,
                                                              eval_data=str(text_jsonl), eval_samples=16))
    rec = q.manifest.model.quantization
    assert rec["per_channel_nodes"] == nodes and rec["per_channel"] is False
    assert q.manifest.metrics["eval"]["cosine_min"] == pytest.approx(mixed[-1].quality["cosine_min"], abs=1e-7)
    grain = _weight_granularity(q.path / "model.onnx")
    ops = {n.name: n.op_type for n in onnx.load(str(emb_onnx.path / "model.onnx")).graph.node}
    checked = {n for n in grain if ops.get(n) in ("MatMul", "Attention")}  # EmbedLayerNormalization has no per-channel form
    assert len(checked) == sum(op in ("MatMul", "Attention") for op in ops.values())
    assert {n for n in checked if grain[n]} == {n for n in nodes if n in checked} != set()
    assert not (tmp_path / "mixed" / "per-tensor.onnx").exists()


def test_per_channel_nodes_are_checked(emb_onnx, tmp_path):
    with pytest.raises(ConfigError, match=r"per_channel_nodes: no node named 'no_such_node'"):
        quantize(emb_onnx, tmp_path / "q", QuantizeConfig(ptq="dynamic", per_channel=False, per_channel_nodes=["no_such_node"]))
    assert not (tmp_path / "q").exists() and not list(tmp_path.glob(".q.*"))
    for bad in (dict(per_channel=True), dict(ptq="static", calib="x.jsonl", per_channel=False)):
        with pytest.raises(PydanticValidationError, match="per_channel_nodes"):
            QuantizeConfig(**{"ptq": "dynamic", "per_channel_nodes": ["Attention_0"], **bad})


# --- no variant within the budget ------------------------------------------------------------------

def test_no_variant_within_the_budget_names_the_closest(emb_onnx, text_jsonl, tmp_path):
    """int8 never gives an embedding exactly fp32's: a minimum cosine of 1 cannot be met."""
    out, cache = tmp_path / "out", tmp_path / "cache"
    opts = ["--data", text_jsonl, "--min-agreement", "1", "--eval-samples", "8", "--batch-sizes", "1,2", "--no-static",
            "--max-float-nodes", "1", "--cache-dir", cache, "--no-openvino"]  # OpenVINO f32 computes fp32's own
    line = assert_clean_failure(cli("tune", emb_onnx.path, "-o", out, *opts), out, codes=(1,))
    assert "no int8 variant met the budget (cosine min >= 1)" in line and "nothing was written" in line
    # every variant tried is in the cache: the one named is the most faithful (then the fastest) of them
    tried = [Trial.model_validate(json.loads(f.read_text())) for f in (cache / "tune").glob("*/*.json")
             if "variant" in json.loads(f.read_text())]
    int8 = [t for t in tried if t.variant.ptq != "fp32"]
    assert len(int8) >= 4 and any(MIXED.search(t.label) for t in int8) and any(FLOAT_NODES.search(t.label) for t in int8)
    closest = max(int8, key=lambda t: (t.quality["agreement"], t.speedup))
    assert f"the closest is {closest.label} (agreement " in line
    # the same from Python (resumed from the cache)
    cfg = TuneConfig(data=str(text_jsonl), min_agreement=1, eval_samples=8, batch_sizes=[1, 2], static=False,
                     max_float_nodes=1, cache_dir=str(cache), openvino=False)
    with pytest.raises(ValidationError, match=f"the closest is {re.escape(closest.label)} "):
        tune(emb_onnx, out, cfg)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


# --- bad inputs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("model, args, needle", [
    ("cls_onnx", ["--data", "{unlabelled}", "--max-accuracy-drop", "1"], "use --min-agreement"),
    ("emb_onnx", ["--data", "{text}", "--max-accuracy-drop", "1"], "needs a classifier"),
    ("cls_onnx", ["--data", "{text}", "--budget-minutes", "0"], "--budget-minutes"),
    ("cls_onnx", ["--data", "{text}", "--budget-minutes", "inf"], "--budget-minutes"),
    ("cls_onnx", ["--data", "{text}", "--max-accuracy-drop", "1", "--min-agreement", "0.9"], "give one budget"),
    ("cls_onnx", ["--data", "{text}", "--min-agreement", "1.5"], "--min-agreement"),
    ("cls_onnx", ["--data", "{text}", "--batch-sizes", "0"], "--batch-sizes"),
    ("cls_onnx", ["--data", "{text}", "--target", "jetson-orin"], "TensorRT"),
    ("cls_int8_dynamic", ["--data", "{text}"], "already int8"),
    ("cls_onnx", [], "--data"),
])
def test_cli_bad_inputs_are_one_line(request, model, args, needle, text_jsonl, unlabelled_jsonl, tmp_path):
    art = request.getfixturevalue(model)
    args = [a.format(text=text_jsonl, unlabelled=unlabelled_jsonl) for a in args]
    out = tmp_path / "out"
    line = assert_clean_failure(cli("tune", art.path, "-o", out, *args, "--cache-dir", tmp_path / "cache"), out, codes=(2,))
    assert needle in line
    assert not (tmp_path / "cache").exists()


def test_bad_inputs_from_python(cls_onnx, emb_onnx, cls_int8_dynamic, text_jsonl, unlabelled_jsonl, tmp_path, sandbox):
    with pytest.raises(PydanticValidationError, match="greater than 0"):
        TuneConfig(data=str(text_jsonl), budget_minutes=0)
    with pytest.raises(PydanticValidationError, match="finite"):
        TuneConfig(data=str(text_jsonl), budget_minutes=float("inf"))
    with pytest.raises(PydanticValidationError, match="give one budget"):
        TuneConfig(data=str(text_jsonl), max_accuracy_drop=1, min_agreement=0.9)
    out, cache = tmp_path / "out", tmp_path / "cache"
    for model, kw, match in [
        (cls_onnx, dict(data=unlabelled_jsonl, max_accuracy_drop=1), "has no labels; use --min-agreement"),
        (emb_onnx, dict(max_accuracy_drop=1), "needs a classifier"),
        (cls_onnx, dict(target="jetson-orin"), "runs TensorRT"),
        (cls_int8_dynamic, {}, "already int8"),
    ]:
        with pytest.raises(ConfigError, match=match):
            tune(model, out, _config(kw.pop("data", text_jsonl), cache, **kw))
        assert not out.exists() and not list(tmp_path.glob(".out.*")) and not cache.exists()
    assert list(sandbox.tmp.iterdir()) == [] and list(sandbox.cwd.iterdir()) == []


def test_output_equal_to_the_input_is_refused(cls_onnx, text_jsonl, tmp_path):
    before = _tree(cls_onnx.path), cls_onnx.manifest.digest()
    with pytest.raises(ConfigError, match="input"):
        tune(cls_onnx, cls_onnx.path, _config(text_jsonl, tmp_path / "cache"))
    line = assert_clean_failure(cli("tune", cls_onnx.path, "-o", cls_onnx.path, "--data", text_jsonl,
                                    "--cache-dir", tmp_path / "cache"), codes=(2,))
    assert "input" in line
    assert (_tree(cls_onnx.path), load_artifact(cls_onnx.path).manifest.digest()) == before


# --- the CLI -----------------------------------------------------------------------------------------

def test_cli_json_and_table_on_an_embedder(emb_onnx, text_jsonl, tmp_path):
    out, cache = tmp_path / "out", tmp_path / "cache"
    opts = ["--data", text_jsonl, "--min-agreement", "0.99", "--eval-samples", "8", "--batch-sizes", "1,2", "--no-static",
            "--max-float-nodes", "1", "--cache-dir", cache]
    r = cli("tune", emb_onnx.path, "-o", out, *opts, "--json")
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip() == ""  # --json: no status lines
    body = json.loads(r.stdout)  # stdout is one JSON object, nothing else
    assert body["metric"] == "agreement" and body["budget"] == "cosine min >= 0.99"
    assert body["artifact"] == str(out.resolve()) and Path(body["report"]).is_file()
    labels = [t["label"] for t in body["trials"]]
    assert labels[0] == "fp32 (reference)" and "dynamic, per-tensor" in labels and len(set(labels)) == len(labels)
    chosen = body["chosen"]
    assert chosen["label"] in labels and chosen["meets_budget"] and chosen["quality"]["cosine_min"] >= 0.99
    assert body["closest"] is None and body["stopped"] is None
    assert all("cosine_min" in t["quality"] and "top1_agreement" not in t["quality"] for t in body["trials"])
    art = load_artifact(out)
    assert art.manifest.metrics["tune"]["chosen"] == Variant.model_validate(chosen["variant"]).key()
    assert art.manifest.metrics["tune"]["metric"] == "agreement" and art.manifest.model.precision == "int8"

    # the table, resumed from the cache: the same choice
    r = cli("tune", emb_onnx.path, "-o", tmp_path / "out2", *opts)
    assert r.returncode == 0, r.stderr
    assert f"tuned {(tmp_path / 'out2').resolve()}: {chosen['label']}, " in r.stdout
    assert "Pareto front" in r.stdout and f"report: {(tmp_path / 'out2').resolve() / 'report' / 'tune.md'}" in r.stdout
    twice = load_artifact(tmp_path / "out2").manifest.metrics["tune"]["trials"]
    assert [t["label"] for t in twice] == labels and all(t["cached"] for t in twice)


# --- a Hugging Face model: exported first; static Q/DQ variants ------------------------------------

def test_a_hugging_face_model_is_exported_first(tiny_text_classifier, text_jsonl, tmp_path, sandbox):
    before = _tree(tiny_text_classifier)
    out = tmp_path / "out"
    res = tune(tiny_text_classifier, out, _config(text_jsonl, tmp_path / "cache", eval_samples=8, max_float_nodes=0,
                                                  static=True, calib_samples=8), on_progress=sandbox.progress)
    assert any(ln.startswith("exporting ") for ln in sandbox.lines)
    sandbox.assert_clean()
    assert _tree(tiny_text_classifier) == before
    art = load_artifact(out)
    assert [s.stage for s in art.manifest.lineage][-2:] == ["export", "tune"]
    assert art.manifest.format == "onnx" and art.manifest.model.precision == "int8"
    # static Q/DQ, one per calibration method, after the dynamic ones
    static = [t for t in res.trials if t.variant.ptq == "static"]
    assert [t.variant.method for t in static] == ["minmax", "entropy", "percentile"]
    assert res.trials.index(static[0]) > max(i for i, t in enumerate(res.trials) if t.variant.ptq == "dynamic")
    assert static[0].error is None and static[0].variant.per_channel and static[0].latency
    # a variant ONNX Runtime cannot build is recorded with its one-line error, not the end of the search
    md = (out / "report" / "tune.md").read_text()
    for t in res.trials:
        assert t.error is None or ("\n" not in t.error and f"| {t.label} |" in md and "failed: " in md)
    assert res.chosen.error is None and res.chosen.meets_budget


# --- the Pareto front --------------------------------------------------------------------------------

def _trial(label: str, speed: float, q: float, ptq: str = "dynamic", **kw) -> Trial:
    v = Variant(ptq=ptq, exclude_nodes=[label]) if ptq != "fp32" else Variant(ptq="fp32")
    return Trial(variant=v, label=label, speedup=speed, quality={"agreement": q, "accuracy": q}, **kw)


def test_pareto_front():
    a, tie = _trial("a", 2.0, 0.90), _trial("tie", 2.0, 0.90)
    b, c = _trial("b", 1.5, 0.95), _trial("c", 1.4, 0.94)  # c: slower and worse than b
    d, e = _trial("d", 1.0, 0.99), _trial("e", 0.9, 0.99)  # e: as good as d, but slower
    f = _trial("f", 1.5, 0.93)  # as fast as b, but worse
    got = front([c, e, d, b, tie, a, f], "agreement")
    assert [t.label for t in got] == ["tie", "a", "b", "d"]  # ties kept; fastest first
    assert [t.speedup for t in got] == sorted((t.speedup for t in got), reverse=True)
    assert front([], "accuracy") == [] and [t.label for t in front([c], "accuracy")] == ["c"]

    # fp32 on the agreement axis agrees with itself; on the accuracy axis it has its own accuracy
    ref = _trial("fp32", 1.0, 0.5, ptq="fp32")
    slow = _trial("slow", 0.8, 0.97)
    assert [t.label for t in front([ref, slow], "agreement")] == ["fp32"]
    assert [t.label for t in front([ref, slow], "accuracy")] == ["fp32", "slow"]
    assert [t.label for t in front([ref, _trial("worse", 0.8, 0.4)], "accuracy")] == ["fp32"]


def test_report_table_fastest_first_failures_last():
    ok1, ok2 = _trial("quick", 2.0, 0.9, meets_budget=True), _trial("steady", 1.2, 0.99, meets_budget=True)
    bad = _trial("broken", 1.0, 0.0, error="cannot build")
    ok1.latency = {1: {"ms": 1.0, "ref_ms": 2.0, "speedup": 2.0, "seq": "~9"}}
    res = TuneResult(artifact=None, budget="cosine min >= 0.9", metric="agreement", chosen=ok2, closest=None,
                     trials=[bad, ok2, ok1], seconds=1.0, machine={})
    rows = [ln for ln in table(res, {}).splitlines() if ln.startswith("| ") and not ln.startswith("| variant")]
    assert [r.split(" | ")[0] for r in rows] == ["| quick", "| **steady**", "| broken"]
    assert "1.00" in rows[0] and "2.00x" in rows[0] and rows[1].split(" | ")[1] == "-"
    assert "failed: cannot build" in rows[2]


def _hidden_size(model) -> int:
    """The length of the first SkipLayerNormalization's gamma (an initializer, or one dequantized)."""
    inits = {i.name: i for i in model.graph.initializer}
    made = {o: n for n in model.graph.node for o in n.output}
    gamma = next(n for n in model.graph.node if n.op_type == "SkipLayerNormalization").input[2]
    t = inits.get(gamma) or inits[made[gamma].input[0]]
    return int(np.prod(t.dims))


def _op_count(model, op: str) -> int:
    return sum(n.op_type == op for n in model.graph.node)


def test_unfused_skip_layernorm_is_the_same_model_and_stays_unfused(cls_onnx, text_jsonl, tmp_path):
    """The rewrite tune tries: SkipLayerNormalization back to Add + LayerNormalization, on the int8
    graph; same outputs, and the session setting it records keeps ONNX Runtime from fusing it again."""
    import onnxruntime as ort

    from edgeopt.data import load_dataset
    from edgeopt.models.preprocess import Preprocessor
    from edgeopt.tuning.rewrites import applicable, apply_rewrites, session_config_for

    q = quantize(cls_onnx, tmp_path / "int8", QuantizeConfig(ptq="dynamic"))
    # a random-initialised model has zero biases and unit LayerNorm scales (and its export shares one
    # tensor among them): give every SkipLayerNormalization its own random gamma, beta and bias
    model, rng = onnx.load(str(q.path / "model.onnx")), np.random.default_rng(0)
    sln = [n for n in model.graph.node if n.op_type == "SkipLayerNormalization"]
    hidden = _hidden_size(model)
    for k, n in enumerate(sln):
        names = [f"test_gamma_{k}", f"test_beta_{k}", f"test_bias_{k}"]
        for name, centre in zip(names, (1.0, 0.0, 0.0)):
            model.graph.initializer.append(numpy_helper.from_array(rng.normal(centre, 0.5, hidden).astype(np.float32), name))
        del n.input[2:]
        n.input.extend(names)
    fused = tmp_path / "fused.onnx"
    onnx.save(model, str(fused))
    n_sln = len(sln)
    assert n_sln > 0 and applicable(fused) == ["unfuse-skip-layernorm"]
    split = tmp_path / "split.onnx"
    shutil.copy(fused, split)
    assert apply_rewrites(split, ["unfuse-skip-layernorm"]) == {"unfuse-skip-layernorm": n_sln}
    g = onnx.load(str(split))
    onnx.checker.check_model(g)
    assert _op_count(g, "SkipLayerNormalization") == 0 and _op_count(g, "LayerNormalization") == n_sln
    assert applicable(split) == []  # nothing left to rewrite

    cfg = session_config_for(["unfuse-skip-layernorm"])
    assert cfg == {"optimization.disable_specified_optimizers": "SkipLayerNormFusion"}

    def session(path, config, optimized=None):
        so = ort.SessionOptions()
        for k, v in config.items():
            so.add_session_config_entry(k, v)
        if optimized:
            so.optimized_model_filepath = str(optimized)
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    kept, refused = tmp_path / "kept.onnx", tmp_path / "refused.onnx"
    a, b = session(fused, {}), session(split, cfg, kept)
    session(split, {}, refused)
    assert _op_count(onnx.load(str(kept)), "SkipLayerNormalization") == 0  # the setting keeps it split
    assert _op_count(onnx.load(str(refused)), "SkipLayerNormalization") == n_sln  # without it ORT fuses again
    pre = Preprocessor(q)
    feeds = pre(load_dataset(str(text_jsonl), kind=pre.kind).samples[:8])
    feeds = {i.name: feeds[i.name] for i in a.get_inputs()}
    np.testing.assert_allclose(b.run(None, feeds)[0], a.run(None, feeds)[0], atol=1e-4)
