"""Kernels built on a host for a board whose TVM has no compiler: write them there, load them here.

A board (a Raspberry Pi, the emulated aarch64 board) runs TVM's runtime only, so the PyTorch engine
there cannot build its sparse kernels. On the host, `prebuild` compiles every distinct sparse layer
geometry's three kernels (forward, dgrad, wgrad) of a model for the board's target, links each with
the preset's cross compiler and writes a folder: one `.so` per kernel and `kernels.json`. On the
board, `load_prebuilt` loads those libraries (`tvm.runtime.load_module`), gates every kernel set
against PyTorch there and puts it into the kernel cache, so `compile_model(model, loaded.target)`
and every `CompiledConvBackend` use them without building.

Example:
    >>> prebuild(model, torch.randn(8, 3, 8, 8), "arm", "kernels/")             # on the host  # doctest: +SKIP
    >>> loaded = load_prebuilt("kernels/")                                          # on the board # doctest: +SKIP
    >>> compile_model(model, loaded.target, fallback="never")                      # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import types
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import tvm
from torch import nn

from mest_compile.compiler.api import layer_inputs, unsupported
from mest_compile.compiler.devices.cross import board_fcompile
from mest_compile.compiler.families import KernelFamily, family_for
from mest_compile.compiler.formats.geometry import ConvGeometry
from mest_compile.compiler.phases import PHASES
from mest_compile.compiler.presets import Preset
from mest_compile.compiler.runtime.backend import geometry_of
from mest_compile.compiler.runtime.cache import CACHE, KernelCache
from mest_compile.compiler.runtime.compiled import CompiledKernels, tuned_schedules
from mest_compile.compiler.runtime.records import TunedChoices
from mest_compile.compiler.target import Target, as_target
from mest_compile.errors import MestError
from mest_compile.sparsity.module import sparse_layers

#: The manifest's file name inside a prebuilt folder.
MANIFEST = "kernels.json"
#: Bumped when the manifest's layout changes; a loader refuses other versions.
FORMAT = 1


@dataclass(frozen=True)
class Prebuilt:
    """What `load_prebuilt` put into a kernel cache.

    Attributes:
        target: the target the kernels were built for (hand it to `compile_model`).
        kernels: the gated kernel sets, one per (family, geometry).
    """

    target: Target
    kernels: tuple[CompiledKernels, ...]


# ---- on the host --------------------------------------------------------------------------------
def prebuild(model: nn.Module, example_input: torch.Tensor, target: Any, out_dir: str | Path, *,
             records: TunedChoices | None = None) -> Path:
    """Build the kernels of `model`'s compiled sparse layers for `target` and write them to `out_dir`.

    Each distinct (family, layer geometry) is built once, with the tiles and schedules `records`
    tuned (default: the family's hand-picked tiles and the target family's schedule), and each
    kernel is linked with the target preset's cross compiler (natively without one).

    Args:
        example_input: a batch for the model: it decides every layer's input size (kernels take
            any batch size).
        target: any form `as_target` takes (`"arm"`).

    Returns:
        The manifest's path.

    Raises:
        MestError: no layer of `model` can use compiled kernels, or the cross compiler is missing.
    """
    tgt = as_target(target)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    link = _linker(tgt)
    inputs = layer_inputs(model, example_input)
    entries: dict[tuple[str, ConvGeometry], dict[str, Any]] = {}
    for name, module in sparse_layers(model).items():
        if unsupported(module) is not None or name not in inputs:
            continue
        family = family_for(module.scheme.name)
        geometry = geometry_of(module, tuple(inputs[name].shape))
        if family.supports(geometry) is not None:
            continue
        key = (family.name, geometry)
        if key not in entries:
            entries[key] = _write(family, geometry, tgt, records, out / f"{family.name}-{len(entries)}", link)
        entries[key]["layers"].append(name)
    if not entries:
        raise MestError("no sparse layer of the model can use compiled kernels: nothing to prebuild")
    built_for = {"name": tgt.name, "key": tgt.key, "num-cores": tgt.num_cores, "preset": asdict(tgt.preset)}
    manifest = {"format": FORMAT, "target": built_for, "kernels": list(entries.values())}
    path = out / MANIFEST
    path.write_text(json.dumps(manifest, indent=1))
    return path


def _linker(target: Target) -> Any:
    """The `fcompile` linking for `target`'s board (None: this machine's default linker)."""
    return None if target.preset.cross_compiler is None else board_fcompile(target.preset)


def _write(family: KernelFamily, geometry: ConvGeometry, target: Target, records: TunedChoices | None,
           stem: Path, link: Any) -> dict[str, Any]:
    """Compile and link the three kernels of one geometry (never run here: they may be foreign code);
    their manifest entry."""
    tiles, mods, tuned = tuned_schedules(family, geometry, target, records)
    files = {}
    for which in PHASES:
        files[which] = f"{stem.name}-{which}.so"
        tvm.compile(mods[which], target=target.tvm).export_library(str(stem.parent / files[which]), fcompile=link)
    kind = type(tiles)
    return {"family": family.name, "geometry": asdict(geometry), "tiles_type": f"{kind.__module__}.{kind.__qualname__}",
            "tiles": asdict(tiles), "files": files, "entries": {w: family.entries[w] for w in PHASES},
            "tuned": list(tuned), "layers": []}


# ---- on the board -------------------------------------------------------------------------------
def load_prebuilt(directory: str | Path, cache: KernelCache | None = None) -> Prebuilt:
    """Load the kernels `prebuild` wrote, gate them here and add them to `cache` (default: the process's).

    Works with TVM's runtime alone (no compiler library): the target is rebuilt from the manifest,
    not by TVM, and the kernel families import without TVM's script front end (see
    `_families_without_tvm_script`).

    Raises:
        MestError: no manifest, another manifest format, or a kernel library missing.
        KernelGateError: a kernel set gives wrong results on this machine (it is cached as failed).
    """
    folder = Path(directory)
    path = folder / MANIFEST
    if not path.is_file():
        raise MestError(f"no {MANIFEST} in {folder}: write one with mest_compile.compiler.prebuilt.prebuild")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise MestError(f"{path} has manifest format {manifest.get('format')!r}; this version reads {FORMAT}")
    _families_without_tvm_script()
    target = built_target(manifest["target"])
    chosen = CACHE if cache is None else cache
    loaded = []
    for entry in manifest["kernels"]:
        start = time.perf_counter()
        family = family_for(entry["family"])
        libraries = {}
        for which in PHASES:
            library = folder / entry["files"][which]
            if not library.is_file():
                raise MestError(f"{path} names {library.name}, which is not there")
            libraries[which] = tvm.runtime.load_module(str(library))
        kernels = CompiledKernels(
            family=family, geometry=ConvGeometry(**entry["geometry"]), target=target.key,
            tiles=_tiles(entry["tiles_type"], entry["tiles"]),
            forward=libraries["forward"][entry["entries"]["forward"]],
            dgrad=libraries["dgrad"][entry["entries"]["dgrad"]],
            wgrad=libraries["wgrad"][entry["entries"]["wgrad"]],
            executables=libraries, build_seconds=time.perf_counter() - start, tuned=tuple(entry["tuned"]),
        )  # fmt: skip
        chosen.add(kernels)
        loaded.append(kernels)
    return Prebuilt(target, tuple(loaded))


@dataclass(frozen=True)
class _BuiltFor:
    """The TVM target the kernels were built for, as far as a board without TVM's compiler can hold it.

    `tvm.target.Target` lives in TVM's compiler library; the runtime needs only the target's text
    (the kernel cache's key) and the one attribute a `Target` reads, `num-cores`.
    """

    text: str
    attrs: dict[str, Any]

    def __str__(self) -> str:
        return self.text

    @property
    def kind(self) -> Any:
        """The target kind: prebuilt kernels are CPU kernels (LLVM), run as host functions."""
        return _LLVM


@dataclass(frozen=True)
class _Kind:
    name: str


_LLVM = _Kind("llvm")


def built_target(spec: dict[str, Any]) -> Target:
    """The `Target` of a manifest's `target` entry: the host's key (what the kernels are cached
    under) and preset, made without TVM's compiler. It serves the prebuilt kernels; it cannot build."""
    preset = Preset(**{**spec["preset"], "debian_packages": tuple(spec["preset"].get("debian_packages", ()))})
    built_for = _BuiltFor(spec["key"], {"num-cores": spec["num-cores"]})
    return Target(spec["name"], built_for, preset)  # type: ignore[arg-type]


def _tiles(qualified: str, values: dict[str, Any]) -> Any:
    """The family's tiles dataclass named in the manifest (only the package's own classes)."""
    module_name, _, class_name = qualified.rpartition(".")
    if not module_name.startswith("mest_compile."):
        raise MestError(f"manifest tiles type {qualified!r} is not one of mest_compile's")
    cls = getattr(importlib.import_module(module_name), class_name)
    known = {f.name for f in fields(cls)}
    if set(values) - known:
        raise MestError(f"manifest tiles {sorted(set(values) - known)} are not fields of {qualified}")
    return cls(**values)


def _families_without_tvm_script() -> None:
    """Let the kernel families import where TVM has only its runtime.

    A family module imports its TIR templates, which import TVM's script front end
    (`tvm.script.tirx`); that front end needs the compiler library (its layout axes are registered
    there), so on a board `import tvm.script.tirx` fails. A board never builds a template: there the
    front end becomes a stand-in that fails, with the reason, only when a template is built.
    """
    try:
        import tvm.script.tirx  # noqa: F401
    except ImportError as err:
        reason = str(err)
    else:
        return
    import tvm.script

    def missing(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise MestError(f"tvm.script.tirx.{name} needs TVM's compiler library, which this TVM lacks "
                        f"({reason}): build kernels on a host (mest_compile.compiler.prebuilt.prebuild)")

    stand_in = types.ModuleType("tvm.script.tirx", "Stand-in: TVM's script front end is missing here.")
    stand_in.__getattr__ = missing  # type: ignore[method-assign]
    sys.modules["tvm.script.tirx"] = stand_in
    tvm.script.tirx = stand_in  # type: ignore[attr-defined]
