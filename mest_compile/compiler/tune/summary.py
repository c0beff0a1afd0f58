"""The summary table `mest-compile tune` prints: per kernel, untuned vs tuned time."""

from __future__ import annotations

from collections.abc import Sequence

from mest_compile.compiler.tune.session import KernelResult


def _us(seconds: float | None) -> str:
    return f"{1e6 * seconds:.1f}" if seconds is not None else "-"


def format_summary(rows: Sequence[KernelResult]) -> str:
    """One line per kernel: layers, untuned and tuned microseconds, speedup, trials, chosen tiles."""
    lines = [f"{'kernel':58} {'layers':>6} {'untuned us':>11} {'tuned us':>9} {'speedup':>7} {'trials':>6}  tiles"]
    for r in rows:
        speedup = f"{r.untuned_s / r.tuned_s:.2f}x" if r.untuned_s and r.tuned_s else "-"
        tiles = " ".join(f"{k}={v}" for k, v in r.best_tiles.items())
        lines.append(f"{r.kernel.name:58} {len(r.kernel.layers):>6} {_us(r.untuned_s):>11} {_us(r.tuned_s):>9} "
                     f"{speedup:>7} {r.trials:>6}  {tiles}")
    return "\n".join(lines)
