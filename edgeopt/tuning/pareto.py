"""The Pareto front of tune's variants (speed against quality) and its report: a table and a plot."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # pragma: no cover
    from .search import Trial, TuneResult


def quality_value(t: "Trial", metric: str) -> float:
    """The quality axis: accuracy (labelled data under an accuracy budget), else agreement with fp32."""
    if t.variant.ptq == "fp32":
        return t.quality.get("accuracy", 1.0) if metric == "accuracy" else 1.0
    return t.quality.get("accuracy" if metric == "accuracy" else "agreement", 0.0)


def front(trials: list["Trial"], metric: str) -> list["Trial"]:
    """The trials no other trial beats on both speed and quality (ties kept), fastest first."""
    out = []
    for t in trials:
        s, q = t.speedup, quality_value(t, metric)
        dominated = any(o is not t and o.speedup >= s and quality_value(o, metric) >= q
                        and (o.speedup > s or quality_value(o, metric) > q) for o in trials)
        if not dominated:
            out.append(t)
    return sorted(out, key=lambda t: -t.speedup)


def table(result: "TuneResult", ref_quality: dict) -> str:
    """Every variant as a markdown table, fastest first; the chosen one in bold."""
    batches = sorted({b for t in result.trials for b in t.latency}, key=int)
    head = ["variant", *[f"b{b} ms" for b in batches], "speed vs fp32",
            "accuracy" if result.metric == "accuracy" else "agreement", "budget", "front", "size MB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    chosen = result.chosen.variant.key() if result.chosen else None
    for t in sorted(result.trials, key=lambda t: (t.error is not None, -t.speedup)):
        if t.error:
            lines.append(f"| {t.label} | " + " | ".join(["-"] * (len(head) - 3)) + f" | failed: {t.error} | | |")
            continue
        ms = []
        for b in batches:
            lat = t.latency.get(b) or t.latency.get(str(b))  # type: ignore[call-overload]
            ms.append("-" if lat is None else f"{lat['ms']:.2f}")
        q = quality_value(t, result.metric)
        qual = f"{q:.2%}" if result.metric == "accuracy" else f"{q:.6f}"
        mark = "ref" if t.variant.ptq == "fp32" else ("yes" if t.meets_budget else "no")
        size = f"{t.size_bytes / 1e6:.1f}" if t.size_bytes else "-"
        label = f"**{t.label}**" if t.variant.key() == chosen else t.label
        lines.append(f"| {label} | " + " | ".join(ms) + f" | {t.speedup:.2f}x | {qual} | {mark} | "
                     f"{'*' if t.on_front else ''} | {size} |")
    return "\n".join(lines)


def write_report(result: "TuneResult", ref_quality: dict, folder: Path) -> Path:
    """report/tune.md (the table, the budget, the machine) and report/pareto.png (when matplotlib is
    installed: the [report] extra)."""
    folder.mkdir(parents=True, exist_ok=True)
    plot = _plot(result, folder / "pareto.png")
    m = result.machine
    c = result.chosen
    where = ""
    if m.get("docker_host"):
        dev = m.get("device") or {}
        where = (f"Latency measured on {m['docker_host']} ({dev.get('cpu', '?')}, {dev.get('cores', '?')} cores, "
                 f"{dev.get('arch', '?')}) in the target's image; quality measured here.")
    lines = [
        "# edgeopt tune", "",
        f"Budget: {result.budget}. Chosen: **{c.label}**, {c.speedup:.2f}x fp32." if c else f"Budget: {result.budget}.", "",
        f"Machine: {m.get('cpu')} ({m.get('cores')} cores; {m.get('cpu_flags') or 'no int8 SIMD flags read'}), "
        f"target {m.get('target')}, {m.get('threads') or 'default'} threads, onnxruntime {m.get('onnxruntime')}. {where}",
        "Speed is the geometric mean over batch sizes of fp32 time / variant time, measured in the same "
        "interleaved runs (each batch padded to its longest real input unless a fixed length was given). "
        "Each row's ms come from its own runs: on a shared machine compare the speed column, not ms across rows.", "",
    ]
    if result.stopped:
        lines += [f"The search stopped early: {result.stopped}.", ""]
    lines += [table(result, ref_quality), ""]
    if plot:
        lines += ["![Pareto front](pareto.png)", ""]
    else:
        lines += ["(no plot: matplotlib is not installed; pip install 'edgeopt[report]')", ""]
    path = folder / "tune.md"
    path.write_text("\n".join(lines))
    return path


def _plot(result: "TuneResult", path: Path) -> Optional[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ok = [t for t in result.trials if t.error is None]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [t.speedup for t in ok]
    ys = [quality_value(t, result.metric) for t in ok]
    ax.scatter(xs, ys, c=["tab:orange" if t.on_front else "tab:gray" for t in ok], s=30, zorder=2)
    fr = sorted((t for t in ok if t.on_front), key=lambda t: t.speedup)
    ax.plot([t.speedup for t in fr], [quality_value(t, result.metric) for t in fr], color="tab:orange", zorder=1)
    for t in ok:
        if t.on_front or t is result.chosen:
            ax.annotate(t.label, (t.speedup, quality_value(t, result.metric)), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    if result.chosen is not None:
        ax.scatter([result.chosen.speedup], [quality_value(result.chosen, result.metric)], s=120, facecolors="none",
                   edgecolors="tab:red", zorder=3, label="chosen")
        ax.legend(loc="lower left")
    ax.set_xlabel("speed vs fp32 (x)")
    ax.set_ylabel("accuracy" if result.metric == "accuracy" else "agreement with fp32")
    ax.set_title(f"edgeopt tune — budget: {result.budget}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
