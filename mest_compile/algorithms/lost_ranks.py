"""Which ranks of a data-parallel run are gone, once a collective has failed.

Gloo says that a connection closed or timed out, not which rank died. Every survivor leaves its
name in the process group's key-value store (hosted by torchrun's agent, or by rank 0 when the
run was started by hand) and waits briefly for the others; the ranks that never answer are the
ones to name. When the store is unreachable, its host is the one that died.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import timedelta
from itertools import count
from typing import TypeVar

import torch.distributed as dist

from mest_compile.errors import MestError, first_line

T = TypeVar("T")

# How long survivors wait for each other's answer: they notice the failure within moments of
# each other (a closed connection) or within the group's timeout (a hung peer).
GRACE_SECONDS = 5.0
# Every survivor numbers its failures alike (each stops at its first): fresh keys per failure.
_INCIDENTS = count(1)


def lost_ranks(rank: int, world_size: int, incident: int, grace: float = GRACE_SECONDS) -> list[int] | None:
    """The ranks that did not answer within `grace` seconds; None when the store is gone.

    Args:
        rank: this process's rank.
        world_size: the number of ranks.
        incident: a number every survivor gives alike for this failure (its keys are fresh).
    """
    def key(other: int) -> str:
        return f"mest-compile/alive/{incident}/{other}"

    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=grace))
        store.set(key(rank), "1")
        deadline = time.monotonic() + grace
        while True:
            missing = [other for other in range(world_size) if other != rank and not store.check([key(other)])]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.1)
    except (RuntimeError, ValueError):
        return None


def describe_loss(rank: int, world_size: int, incident: int, what: str, error: BaseException) -> str:
    """One line naming the lost ranks, for the error a survivor stops with."""
    lost = lost_ranks(rank, world_size, incident)
    if lost is None:  # the store lives with rank 0 (started by hand) or on torchrun's rendezvous host
        who = "rank 0 (or the machine hosting the rendezvous store)"
    else:
        who = ("rank " + ", ".join(str(r) for r in lost)) if lost else "a peer rank"
    # Gloo starts its messages with its source position ("[.../pair.cc:537] Read error ...").
    cause = re.sub(r"^\[[^\]]*\]\s*", "", first_line(error))
    cause = cause if len(cause) <= 100 else cause[:100].rsplit(" ", 1)[0] + " ..."
    return (f"{who} of {world_size} stopped responding during {what}; rank {rank} stops too "
            f"(the last checkpoint is intact). Cause: {cause}")


def collective(what: str, call: Callable[[], T]) -> T:
    """`call()` (a collective of the default process group); its failure becomes one `MestError` line."""
    try:
        return call()
    except RuntimeError as exc:
        raise MestError(describe_loss(dist.get_rank(), dist.get_world_size(), next(_INCIDENTS), what, exc)) from None
