"""Tuning records: MetaSchedule's JSON database plus a small manifest, and their replay.

`mest-compile tune` writes MetaSchedule's own `database_workload.json` and
`database_tuning_record.json` (plain TVM opens them with `ms.database.JSONDatabase`) and
`manifest.json`, which says for every tuned kernel which template variant each workload is,
the static shapes it was specialised to, and the untuned and best times. The best record's
trace replays onto the same template with symbolic batch size and nonzeros
(`runtime/compiled.replay`), so one tuning run serves every mask and batch of the layer.

Records are handed to builds, never looked up by them: `with TuningRecords(work_dir):` puts a work
dir's records in effect for the builds inside the block (MetaSchedule's `with database:`), and
`use_records(work_dir)` for the rest of the process (a training run).
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

from mest_compile.compiler.families import KernelFamily, family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.runtime import records as runtime_records
from mest_compile.compiler.target import Target
from mest_compile.compiler.tune.workload import TuneKernel, workload
from mest_compile.errors import MestError
from mest_compile.io import atomic_write_text

MANIFEST = "manifest.json"
DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
FORMAT = "mest-compile-tuning"
VERSION = 1


def geometry_dict(geo: ConvGeometry) -> dict[str, int]:
    """JSON form of a layer geometry."""
    return dataclasses.asdict(geo)


def trace_json(trace: Any) -> Any:
    """A schedule trace as plain JSON (`Trace.as_json` keeps TVM integers in its decisions)."""

    def plain(node: Any) -> Any:
        if node is None or isinstance(node, bool | int | float | str):
            return node
        if hasattr(node, "value"):  # IntImm / FloatImm
            return node.value
        return [plain(item) for item in node]

    return plain(trace.as_json(remove_postproc=False))


def empty_manifest(target: str) -> dict[str, Any]:
    """A manifest with no kernels yet."""
    return {"format": FORMAT, "version": VERSION, "target": target, "kernels": {}}


def read_manifest(work_dir: Path) -> dict[str, Any] | None:
    """The manifest of `work_dir`, None if there is none.

    Raises:
        MestError: the manifest is not a mest-compile tuning manifest (corrupt or foreign).
    """
    path = work_dir / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise MestError(f"{path} is corrupt ({err}); nothing was changed: move it away or use another --work-dir") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("kernels"), dict):
        raise MestError(f"{path} is not a mest-compile tuning manifest; use another --work-dir")
    if data.get("version") != VERSION:
        raise MestError(f"{path} has manifest version {data.get('version')}, this mest-compile reads {VERSION}: re-tune")
    return data


def write_manifest(work_dir: Path, manifest: dict[str, Any]) -> None:
    """Write the manifest atomically (a crash leaves the old one or the new one, never half)."""
    atomic_write_text(work_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def open_database(work_dir: Path, create: bool = False) -> Any:
    """MetaSchedule's JSON database in `work_dir`.

    Raises:
        MestError: the files are missing (unless `create`) or not a MetaSchedule database.
    """
    from tvm.s_tir import meta_schedule as ms

    missing = [name for name in DATABASE_FILES if not (work_dir / name).exists()]
    if missing and not create:
        raise MestError(f"{work_dir} has no MetaSchedule database ({', '.join(missing)} missing): run mest-compile tune first")
    try:
        return ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=create)
    except Exception as err:  # TVM raises its own error types for unparsable lines
        first = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise MestError(
            f"the MetaSchedule database in {work_dir} cannot be read ({first}); nothing was changed: "
            "move it away or use another --work-dir"
        ) from err


class TuningRecords:
    """The tuned kernels of one work dir, ready to replay onto kernel builds."""

    def __init__(self, work_dir: str | Path) -> None:
        self.work_dir = Path(work_dir)
        if not self.work_dir.is_dir():
            raise MestError(f"tuning work dir {self.work_dir} does not exist")
        manifest = read_manifest(self.work_dir)
        if manifest is None:
            raise MestError(f"{self.work_dir} holds no {MANIFEST}: it was not written by mest-compile tune")
        self.manifest = manifest
        self.target: str = str(manifest["target"])
        self.database = open_database(self.work_dir)
        self.key = str(self.work_dir.resolve())
        self._warned: set[str] = set()
        self._tokens: list[Any] = []

    def __enter__(self) -> TuningRecords:
        self._tokens.append(runtime_records.push(self))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        runtime_records.pop(self._tokens.pop())

    def entries(self, family: KernelFamily, geometry: ConvGeometry) -> dict[str, dict[str, Any]]:
        """Manifest entries with a best record for `geometry`'s kernels of `family`, by kernel."""
        wanted = geometry_dict(geometry)
        out: dict[str, dict[str, Any]] = {}
        for entry in self.manifest["kernels"].values():
            if entry.get("best") is None or entry.get("geometry") != wanted:
                continue
            try:
                same = family_for(entry["scheme"]) is family
            except MestError:
                continue
            if same:
                out[entry["which"]] = entry
        return out

    def choice(self, family: KernelFamily, geometry: ConvGeometry, target: Target) -> tuple[Any, dict[str, Any]]:
        """The tiles and traces tuned for `geometry` on `target`: `(None, {})` if there are none."""
        entries = self.entries(family, geometry)
        if not entries:
            return None, {}
        if target.key != self.target:
            self._warn_once(f"target:{target.key}", f"tuning records in {self.work_dir} are for {self.target}, these "
                            f"kernels are built for {target.key}: using the hand-written schedules")
            return None, {}
        tiles = family.default_tiles(geometry, target)
        traces: dict[str, Any] = {}
        for which in PHASES:
            entry = entries.get(which)
            if entry is None:
                continue
            best = entry["variants"][entry["best"]]
            chosen = dataclasses.replace(tiles, **best["tiles"])
            kernel = TuneKernel(entry["scheme"], geometry, which, int(entry["batch"]), float(entry["sparsity"]))
            shapes = [(tuple(s), d) for s, d in best["shapes"]]
            mod = workload(family, kernel, chosen, shapes, int(best["flops"]), target.family)
            record = self._best_record(mod)
            if record is None:
                self._warn_once(f"stale:{entry['name']}", f"the tuning record of {entry['name']} in {self.work_dir} does "
                                "not match this version's kernels: using the hand-written schedule (re-run tune)")
                continue
            tiles = chosen
            # The schedule the tuner's paired re-measurement chose, else the database's best record.
            traces[which] = entry["trace"] if entry.get("trace") is not None else record.trace
        return tiles, traces

    def _best_record(self, mod: Any) -> Any:
        if not self.database.has_workload(mod):
            return None
        top = self.database.get_top_k(self.database.commit_workload(mod), 1)
        return top[0] if top else None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=4)


def use_records(work_dir: str | Path | None) -> TuningRecords | None:
    """Put `work_dir`'s records in effect for the rest of the process (None: hand-written schedules only).

    Kernels already compiled keep their schedules: builds are cached per records.

    Raises:
        MestError: the work dir has no readable manifest and database.
    """
    records = TuningRecords(work_dir) if work_dir is not None else None
    runtime_records.install(records)
    return records
