"""An `Inspection` as text sections (the terminal) and as files (`--out DIR`)."""

from __future__ import annotations

import json
from pathlib import Path

from mest_compile.compiler.inspect.codegen import Code
from mest_compile.compiler.inspect.html import render_html
from mest_compile.compiler.inspect.inspection import Inspection
from mest_compile.compiler.inspect.stats import format_stats
from mest_compile.errors import MestError

#: What `--show` can ask for, in display order.
SHOW = ("graph", "tir", "source", "asm", "stats")


def parse_show(values: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """`--show` values (repeatable, comma-separated, or `all`) -> sections in display order.

    Raises:
        MestError: an unknown section.
    """
    asked = {v.strip() for value in values for v in value.split(",") if v.strip()} or {"stats"}
    if "all" in asked:
        return SHOW
    unknown = sorted(asked - set(SHOW))
    if unknown:
        raise MestError(f"unknown --show {unknown[0]!r}; known: {', '.join(SHOW)}, all")
    return tuple(s for s in SHOW if s in asked)


def _rule(title: str) -> str:
    return f"==== {title} " + "=" * max(4, 96 - len(title))


def _code(code: Code) -> str:
    return code.text if code.text is not None else f"({code.note})"


def render_text(ins: Inspection, show: tuple[str, ...]) -> str:
    """The asked sections as one text."""
    parts = [f"inspect {ins.subject} at {ins.target_name}: {len(ins.kernels)} kernel(s)", ins.rewrite_report]
    if "graph" in show:
        parts += [_rule("traced graph (before the rewrite)"), ins.before, _rule("rewritten graph"), ins.after]
    for k in ins.kernels:
        title = f"{k.name} ({k.scheme}; {', '.join(k.layers)})"
        if "tir" in show:
            parts += [_rule(f"TIR of {title}"), k.tir]
        if "source" in show:
            parts += [_rule(f"{k.source.language} of {k.name}"), _code(k.source)]
        if "asm" in show:
            parts += [_rule(f"{k.asm.language} of {k.name}"), _code(k.asm)]
    if "stats" in show:
        parts += [_rule("kernel statistics"), format_stats(ins.stats)]
    return "\n".join(parts) + "\n"


def write_artifacts(ins: Inspection, out: str | Path) -> list[Path]:
    """Write every artifact under `out`: graphs, per-kernel TIR and code, stats JSON, HTML report.

    Returns:
        The written files.
    """
    root = Path(out)
    try:
        (root / "kernels").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise MestError(f"cannot write to {root}: {err.strerror}") from None
    files: dict[str, str] = {
        "graph_before.py": ins.before,
        "graph_after.py": ins.after,
        "rewrite.txt": ins.rewrite_report + "\n",
        "stats.json": json.dumps({"subject": ins.subject, "target": str(ins.target),
                                  "layers": [s.to_dict() for s in ins.stats]}, indent=1) + "\n",  # fmt: skip
        "report.html": render_html(ins),
    }
    for k in ins.kernels:
        files[f"kernels/{k.name}.tir.py"] = k.tir
        for code in (k.source, k.asm):
            if code.text is not None:
                files[f"kernels/{k.name}.{code.extension}"] = code.text
    written = []
    for rel, text in files.items():
        path = root / rel
        path.write_text(text)
        written.append(path)
    return written
