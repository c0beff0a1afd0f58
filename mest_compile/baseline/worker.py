"""A benchmark side in its own process: set up once, then time one round per request.

The parent (`mest_compile.compiler.bench.run`) starts one process per side with a JSON spec,
then alternates them: it writes `round` to one side's stdin and waits for its JSON line of times
before asking the other, so only one side runs at a time. `quit` (or end of input) ends a side.
`serve` is the loop; this module's `main` is the dense side:

    python -m mest_compile.baseline.worker '{"scheme": ..., "cases": [...], ...}'
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from mest_compile.baseline.dense import Thunk, dense_layer_calls, dense_step, layer_inputs_of, sparse_model, step_batch


#: Untimed calls before each thunk's timed ones. A side's round starts right after the other
#: side's, which evicted its data from the caches; measured, the first 2-4 calls of a 1.5 ms
#: kernel then took 3.5-4 ms and the rest 1.5-1.9 ms, enough to move the median of a round's
#: first thunk (its layer's count then multiplies the error in the 30-conv total).
WARMUP_CALLS = 2


def _times(call: Thunk, reps: int) -> list[float]:
    for _ in range(WARMUP_CALLS):
        call()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def time_round(layers: Mapping[str, Mapping[str, Thunk]], step: Thunk | None, reps: int,
               step_reps: int) -> dict[str, Any]:
    """Each layer's thunks `reps` times and the step `step_reps` times; times in ms, and the peak RSS."""
    out: dict[str, Any] = {"layers": {name: {key: _times(call, reps) for key, call in calls.items()}
                                      for name, calls in layers.items()}}
    if step is not None:
        out["step"] = _times(step, step_reps)
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def serve(run_round: Callable[[], dict[str, Any]], ready: dict[str, Any]) -> None:
    """Print `ready` (set-up facts), then one JSON line per `round` read from stdin."""
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        if line.strip() != "round":
            break
        print(json.dumps(run_round()), flush=True)


def dense_side(spec: Mapping[str, Any]) -> tuple[Callable[[], dict[str, Any]], dict[str, Any]]:
    """The dense side of `spec`: its round and its set-up facts."""
    layers = {}
    for case in spec["cases"]:
        x, w, mask, dy = layer_inputs_of(case, spec["scheme"], spec["sparsity"], spec["batch"], spec["seed"])
        layers[case["name"]] = dense_layer_calls(x, w * mask, dy, case["stride"], case["padding"])
    step = None
    if spec["step"]:
        model = sparse_model(spec["model"], spec["scheme"], spec["sparsity"], spec["seed"])
        step = dense_step(model, *step_batch(spec))
    facts = {"side": "dense", "torch_threads": torch.get_num_threads(), "tvm_loaded": "tvm" in sys.modules}
    return (lambda: time_round(layers, step, spec["reps"], spec["step_reps"])), facts


def main() -> None:
    """The dense side's process (see the module docstring)."""
    run_round, facts = dense_side(json.loads(sys.argv[1]))
    serve(run_round, facts)


if __name__ == "__main__":
    main()
