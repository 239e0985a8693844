"""Render a BenchReport: a terminal table, Markdown, JSON and a latency-vs-accuracy PNG."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..outputs import REPORT_MARK
from .core import BenchReport

COLUMNS = ["artifact", "format", "precision", "batch", "seq", "p50 ms", "p90 ms", "p99 ms", "items/s",
           "speedup", "size MB", "peak RSS MB", "accuracy", "agreement"]
HTTP_COLUMNS = ["concurrency", "requests", "errors"]


def _columns(report: BenchReport) -> list[str]:
    return COLUMNS + (HTTP_COLUMNS if any(r.concurrency is not None for r in report.rows) else [])


def _num(v: Optional[float], fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def rows_as_text(report: BenchReport) -> list[list[str]]:
    out = []
    for r in report.rows:
        agree = r.top1_agreement if r.top1_agreement is not None else r.cosine_mean
        agree_s = "-" if agree is None else (_pct(agree) if r.top1_agreement is not None else f"cos {agree:.4f}")
        out.append([r.artifact, r.format, r.precision, str(r.batch_size), str(r.seq_len or "-"), f"{r.p50_ms:.2f}",
                    f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}", f"{r.throughput:.1f}",
                    "-" if r.speedup is None else f"{r.speedup:.2f}x", _num(r.size_mb, ".1f"), _num(r.peak_rss_mb, ".0f"),
                    _pct(r.accuracy), agree_s]
                   + ([str(r.concurrency or "-"), str(r.requests or "-"), str(r.errors if r.errors is not None else "-")]
                      if any(x.concurrency is not None for x in report.rows) else []))
    return out


def rich_table(report: BenchReport, title: str = "edgeopt bench"):
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(f"{title} — data: {report.data}, threads: {report.threads or 'default'}"))
    for c in _columns(report):
        t.add_column(c, justify="left" if c in ("artifact", "format", "precision") else "right")
    for row in rows_as_text(report):
        t.add_row(*(Text(cell) for cell in row))  # an artifact named 'm[bold]' is text, not markup
    return t


def markdown(report: BenchReport, title: str = "edgeopt bench") -> str:
    m = report.machine
    lines = [f"# {title}", "",
             f"Machine: {m.get('cpu')} ({m.get('cores')} cores), Python {m.get('python')}, "
             f"onnxruntime {m.get('onnxruntime')}, torch {m.get('torch', '-')}",
             f"Data: {report.data}; threads: {report.threads or 'default'}; seq_len: {report.config.seq_len}; "
             f"runs: {report.config.runs} after {report.config.warmup} warm-up", "",
             "| " + " | ".join(_columns(report)) + " |", "|" + "---|" * len(_columns(report))]
    lines += ["| " + " | ".join(r) + " |" for r in rows_as_text(report)]
    lines += ["", "Speedup is the first artifact's p50 over this one's at the same batch size. "
              "Agreement is top-1 agreement (classifiers) or mean cosine (embeddings) with the first artifact."]
    return "\n".join(lines) + "\n"


def plot(report: BenchReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .._version import __version__

    fig, ax = plt.subplots(figsize=(7, 4.5))
    use_acc = any(r.accuracy is not None for r in report.rows)
    for bs in sorted({r.batch_size for r in report.rows}):
        rows = [r for r in report.rows if r.batch_size == bs]
        ys = [((r.accuracy if use_acc else (r.top1_agreement or r.cosine_mean or 1.0)) or 0) * 100 for r in rows]
        ax.scatter([r.p50_ms for r in rows], ys, label=f"batch {bs}", s=60)
        for r, y in zip(rows, ys):
            ax.annotate(r.artifact, (r.p50_ms, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("p50 latency (ms, log scale)")
    ax.set_ylabel("accuracy (%)" if use_acc else "agreement with first artifact (%)")
    ax.set_title(f"latency vs {'accuracy' if use_acc else 'fidelity'} — {report.data}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    # The 'Software' tag marks the plot as edgeopt's, so a later run may replace it.
    fig.savefig(path, dpi=110, format="png", metadata={"Software": f"edgeopt {__version__}"})
    plt.close(fig)
    return Path(path)


def check_report_paths(json_path: Optional[Path], md_path: Optional[Path], inputs: tuple = ()) -> None:
    """Refuse report paths that are not edgeopt's to write (before any benchmarking starts)."""
    from ..outputs import check_output, check_outputs_distinct

    png = Path(md_path).with_suffix(".png") if md_path else None
    if md_path and Path(md_path).suffix.lower() == ".png":
        from ..errors import ConfigError

        raise ConfigError(f"--report {md_path}: give a Markdown file name (.md); the plot is written beside it as .png")
    if md_path:
        from .._optional import require

        require("report", purpose="--report's plot")
    check_outputs_distinct([json_path, md_path, png])
    for p in (json_path, md_path, png):
        if p is not None:
            check_output(p, *inputs, kind="file")


def write_outputs(report: BenchReport, json_path: Optional[Path] = None, md_path: Optional[Path] = None,
                  title: str = "edgeopt bench", inputs: tuple = ()) -> dict[str, Path]:
    """Write the JSON and/or Markdown report (each atomically); the PNG plot goes next to the Markdown report.

    A path that exists is replaced only if edgeopt wrote it (see edgeopt.outputs)."""
    return write_report_files(report, json_path, md_path, inputs, lambda: markdown(report, title), plot,
                              "latency vs accuracy")


def write_report_files(report, json_path: Optional[Path], md_path: Optional[Path], inputs: tuple,
                       markdown_text, plot_fn, caption: str) -> dict[str, Path]:
    """The JSON (``report`` as pydantic JSON) and the Markdown (``markdown_text()``) with its PNG
    (``plot_fn(report, path)``) beside it, each written atomically; shared by every kind of bench."""
    from ..outputs import write_file_atomic

    check_report_paths(json_path, md_path, inputs)  # also checks that [report] is installed for the plot
    written = {}
    if json_path:
        written["json"] = write_file_atomic(json_path, lambda t: t.write_text(report.model_dump_json(indent=2)), *inputs)
    if md_path:
        md_path = Path(md_path)
        png = write_file_atomic(md_path.with_suffix(".png"), lambda t: plot_fn(report, t), *inputs)
        text = markdown_text() + f"\n![{caption}]({png.name})\n\n<!-- {REPORT_MARK} -->\n"
        written["report"] = write_file_atomic(md_path, lambda t: t.write_text(text), *inputs)
        written["plot"] = png
    return written
