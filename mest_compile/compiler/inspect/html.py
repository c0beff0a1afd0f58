"""A self-contained HTML report: the graph before and after, then the kernels side by side."""

from __future__ import annotations

from html import escape

from mest_compile.compiler.inspect.codegen import Code
from mest_compile.compiler.inspect.inspection import Inspection

_STYLE = """
body { font-family: sans-serif; margin: 1em; }
.row { display: flex; gap: 1em; align-items: flex-start; }
.col { flex: 1 1 0; min-width: 0; }
pre { background: #f6f6f6; padding: .5em; overflow: auto; max-height: 36em; font-size: 12px; }
table { border-collapse: collapse; font-size: 13px; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
td:first-child, th:first-child { text-align: left; }
.note { color: #a40; }
"""


def _pre(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def _code(code: Code) -> str:
    body = _pre(code.text) if code.text is not None else f'<p class="note">{escape(code.note or "")}</p>'
    return f"<h4>{escape(code.language)}</h4>{body}"


def _stats_table(ins: Inspection) -> str:
    head = ("layer", "kernel", "kept", "density", "units", "capacity", "MFLOP", "KiB", "FLOP/B")
    rows = [
        (s.layer, s.kernel, s.kept_weights, f"{s.density:.3f}", f"{s.units} {s.unit}", s.capacity,
         f"{s.flops / 1e6:.2f}", f"{s.bytes / 1024:.1f}", f"{s.intensity:.2f}")
        for s in ins.stats
    ]  # fmt: skip
    cells = "".join("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{cells}</table>"


def render_html(ins: Inspection) -> str:
    """The report as one HTML page (no external resources)."""
    kernels = "".join(
        f'<div class="col"><h3>{escape(k.name)}</h3><p>{escape(k.scheme)}; layers: {escape(", ".join(k.layers))}</p>'
        + (f'<p class="note">{escape(k.note)}</p>' if k.note else "")
        + f"<h4>TIR</h4>{_pre(k.tir)}{_code(k.source)}{_code(k.asm)}</div>"
        for k in ins.kernels
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>mest-compile inspect: {escape(ins.subject)}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{escape(ins.subject)} at {escape(ins.target_name)}</h1><p><code>{escape(str(ins.target))}</code></p>"
        f"<h2>Rewrite</h2>{_pre(ins.rewrite_report)}<h2>Kernel statistics</h2>{_stats_table(ins)}"
        f'<h2>Graph</h2><div class="row"><div class="col"><h3>traced</h3>{_pre(ins.before)}</div>'
        f'<div class="col"><h3>rewritten</h3>{_pre(ins.after)}</div></div>'
        f'<h2>Kernels</h2><div class="row">{kernels}</div></body></html>\n'
    )
