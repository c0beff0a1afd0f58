"""What a run leaves behind: metrics as JSON lines, a summary, and a plot."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

from mest_compile.io import atomic_write_text

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
PLOT = "training.png"


def append_metrics(run_dir: pathlib.Path, record: dict[str, Any]) -> None:
    """Append one epoch's record to the run's JSON-lines log."""
    with open(run_dir / METRICS, "a") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def rewrite_metrics(run_dir: pathlib.Path, history: Sequence[dict[str, Any]]) -> None:
    """Replace the log by `history` (a resumed run drops epochs logged after its checkpoint)."""
    atomic_write_text(run_dir / METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in history))


def write_summary(run_dir: pathlib.Path, summary: dict[str, Any]) -> None:
    """The run's summary as JSON."""
    atomic_write_text(run_dir / SUMMARY, json.dumps(summary, indent=2, sort_keys=True) + "\n")


def format_summary(summary: dict[str, Any]) -> str:
    """A table a person reads at the end of a run."""
    lines = [
        f"scheme {summary['scheme']}  epochs {summary['epochs']}  dataset {summary['dataset']}  model {summary['model']}",
        f"test accuracy {100 * summary['final_test_acc']:.2f}% (best {100 * summary['best_test_acc']:.2f}%)",
        f"sparsity {100 * summary['sparsity']:.2f}% over the sparse layers, "
        f"{100 * summary['model_sparsity']:.2f}% over all conv/linear weights",
        f"mask updates {summary['mask_updates']}",
    ]
    if summary.get("dense_equivalent_flops"):
        lines.append(f"training FLOPs {summary['training_flops']:.4g}, {100 * summary['flops_fraction']:.1f}% of "
                     f"dense training's {summary['dense_equivalent_flops']:.4g}")
    parallel = summary.get("distributed")
    if parallel:
        lines.append(f"data-parallel: {parallel['world_size']} ranks ({parallel['backend']}), "
                     f"{parallel['reduced_bytes_per_step'] / 1024:.1f} KiB reduced per step "
                     f"(dense {parallel['dense_bytes_per_step'] / 1024:.1f} KiB), {parallel['mask_checks']} mask checks")
    if summary.get("accuracy_matrix"):
        lines.append(f"continual {summary['continual']} ({summary['tasks']} tasks): "
                     f"Class-IL {100 * summary['class_il_accuracy']:.2f}%  Task-IL {100 * summary['task_il_accuracy']:.2f}%"
                     f"  forgetting {100 * summary['forgetting']:.2f} points")
    kernels = summary.get("kernels")
    if kernels:
        compiled = sum(entry.get("status") == "compiled" for entry in kernels["layers"].values())
        lines.append(f"compiled kernels ({kernels['target']}): {compiled}/{len(kernels['layers'])} layers; "
                     + _backend_totals(kernels))
    lines += ["", f"{'layer':<32} {'shape':<18} {'nnz':>8} {'sparsity':>9}" + ("  kernels" if kernels else "")]
    for layer in summary["layers"]:
        shape = "x".join(str(d) for d in layer["shape"])
        line = f"{layer['name']:<32} {shape:<18} {layer['nnz']:>8} {100 * layer['sparsity']:>8.2f}%"
        if kernels:
            entry = kernels["layers"].get(layer["name"], {})
            speed = f" {entry['speedup']:.2f}x" if "speedup" in entry else ""
            line += f"  {entry.get('status', '-')}{speed}" + (f" ({entry['reason']})" if entry.get("reason") else "")
        lines.append(line)
    return "\n".join(lines)


def _backend_totals(kernels: dict[str, Any]) -> str:
    """What the layers' backends did: a GPU's launches and bytes moved when layers ran on one (only
    GPU backends report launches), else the host kernels' builds and repacks."""
    if "launches" in kernels:
        moved = (kernels["uploaded_bytes"] + kernels["downloaded_bytes"]) / 2**20
        return (f"on the GPU {kernels['launches']} launches, {moved:.1f} MiB moved, "
                f"{kernels['index_uploads']} index uploads")
    builds = kernels["builds"]
    return (f"{builds['builds']} builds ({builds['build_seconds']:.1f} s), {builds['reuses']} reuses, "
            f"{kernels['repacks']} repacks, {kernels['rebuilds']} rebuilds")


def plot_history(run_dir: pathlib.Path, history: Sequence[dict[str, Any]]) -> pathlib.Path:
    """Accuracy and sparsity over epochs, as a PNG beside the metrics."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (acc_ax, sp_ax) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    acc_ax.plot(epochs, [100 * r["train_acc"] for r in history], label="train")
    acc_ax.plot(epochs, [100 * r["test_acc"] for r in history], label="test")
    acc_ax.set_ylabel("accuracy (%)")
    acc_ax.legend(loc="lower right")
    acc_ax.grid(alpha=0.3)
    sp_ax.plot(epochs, [100 * r["sparsity"] for r in history], label="sparse layers (after update)")
    sp_ax.plot(epochs, [100 * r["model_sparsity"] for r in history], label="all conv/linear weights")
    pruned = [(r["epoch"], _pruned_sparsity(r["mutation"])) for r in history if r.get("mutation")]
    if pruned:  # the Elastic Mutation's dip: how sparse the layers were between prune and grow
        sp_ax.scatter(*zip(*[(e, 100 * s) for e, s in pruned]), marker="v", s=18, color="C3",
                      label="after prune (mutation)", zorder=3)
    sp_ax.set_ylabel("sparsity (%)")
    sp_ax.set_xlabel("epoch")
    sp_ax.legend(loc="best", fontsize="small")
    sp_ax.grid(alpha=0.3)
    return save_png(fig, run_dir / PLOT)


def save_png(fig: Any, path: pathlib.Path) -> pathlib.Path:
    """Write a matplotlib figure as a PNG in one rename (a reader never sees half a file), and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path


def _pruned_sparsity(mutation: dict[str, Any]) -> float:
    """Sparsity over the mutated layers right after the prune, weighted by layer size."""
    layers = mutation["layers"].values()
    total = sum(layer["size"] for layer in layers)
    return sum(layer["size"] * layer["sparsity_after_prune"] for layer in layers) / total if total else 0.0
