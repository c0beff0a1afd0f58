"""Run TVM-generated OpenCL kernels (Mali, Adreno presets) with our own OpenCL host.

TVM compiles a GPU-scheduled PrimFunc into OpenCL C plus host code that would launch it, but the
PyPI runtime cannot run that host code. What the host code does is recovered from TVM's own
lowering instead of being guessed: the host function's `call_ffi_kernel` statements name each
kernel, its operands in kernel order (buffers sorted by name, then scalars: symbolic shapes *and*
values TVM's CSE hoisted to the host, such as `N * 288`) and its launch extents as expressions.
Those expressions are evaluated with the argument shapes, the OpenCL signature is parsed to
check the operands, and the kernels are launched in order.

Example:
    >>> kernel = compile_opencl(gpu_scheduled_func, "mali")               # doctest: +SKIP
    >>> *_, y = kernel(x, values, indices, indptr, np.empty(y_shape, np.float32))
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm
import tvm_ffi

from mest_compile.compiler.devices.arrays import as_numpy
from mest_compile.compiler.devices.opencl import Buffer, Context
from mest_compile.compiler.presets import Preset, load_preset
from mest_compile.errors import MestError

# OpenCL C scalar type -> numpy dtype (kernel scalars and buffer elements).
_CL_TYPES = {
    "char": np.int8, "uchar": np.uint8, "short": np.int16, "ushort": np.uint16, "int": np.int32,
    "uint": np.uint32, "long": np.int64, "ulong": np.uint64, "half": np.float16, "float": np.float32,
    "double": np.float64, "bool": np.bool_,
}  # fmt: skip
_SIGNATURE = re.compile(r"__kernel\s+void\s+(\w+)\s*\(([^)]*)\)")
_HOST = {"kind": "llvm"}  # the host stubs are never run: this machine's LLVM is enough to lower


@dataclass(frozen=True)
class KernelParam:
    """One parameter of a `__kernel` signature."""

    name: str
    dtype: np.dtype
    is_buffer: bool


def parse_kernel_signatures(source: str) -> dict[str, list[KernelParam]]:
    """`__kernel` name -> parameters, from OpenCL C (declarations and definitions agree)."""
    found: dict[str, list[KernelParam]] = {}
    for name, params in _SIGNATURE.findall(source):
        parsed = []
        for raw in filter(None, (p.strip() for p in params.split(","))):
            words = raw.replace("*", " * ").split()
            base = next((w for w in words if w in _CL_TYPES), None)
            if base is None:
                raise MestError(f"kernel {name}: unsupported OpenCL parameter {raw!r}")
            parsed.append(KernelParam(words[-1], np.dtype(_CL_TYPES[base]), "*" in words))
        found[name] = parsed
    return found


@dataclass(frozen=True)
class Launch:
    """One kernel launch of the lowered host function (expressions over the host's variables)."""

    kernel: str
    operands: list[Any]
    grid: dict[str, Any]
    threads: dict[str, Any]


def _walk(node: Any) -> Iterator[Any]:
    """Every IR object under `node`, in program order (TVM 0.27 has no Python TIR visitor)."""
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list | tuple | tvm_ffi.Array):
            stack.extend(reversed(list(item)))
            continue
        if not isinstance(item, tvm_ffi.Object):
            continue
        yield item
        fields: list[str] = []
        info = getattr(type(item), "__tvm_ffi_type_info__", None)
        while info is not None:
            fields = [f.name for f in info.fields if f.name != "span"] + fields
            info = info.parent_type_info
        stack.extend(reversed([getattr(item, f) for f in fields]))


def _lower_host(mod: tvm.IRModule, target: tvm.target.Target) -> Any:
    """The lowered host PrimFunc, through the same steps as `tvm.compile`.

    That is `tvm.tirx.build` with the "default" pipeline, also for Adreno: `tvm.compile` does not
    use the Adreno pipeline that `get_default_tir_pipeline` would pick.
    """
    build = importlib.import_module("tvm.tirx.build")  # `tvm.tirx.build` the attribute is a function
    bound = tvm.tirx.transform.BindTarget(target.with_host(target.host))(mod)
    pipeline = tvm.tirx.get_tir_pipeline("default")[0]
    host_mod, _ = build.split_host_device_mods(pipeline(bound))
    (host,) = [f for _, f in host_mod.functions.items()]
    return host


def _is_launch(node: Any) -> bool:
    return type(node).__name__ == "Call" and getattr(node.op, "name", "") == "tirx.call_ffi_kernel"


def _launches(host: Any) -> tuple[list[Launch], list[tuple[Any, Any]]]:
    """Kernel launches and integer `Bind`s (in program order) of a lowered host function."""
    launches, binds = [], []
    for node in _walk(host.body):
        kind = type(node).__name__
        if kind in ("For", "IfThenElse", "While") and any(map(_is_launch, _walk(node))):
            raise MestError("kernel launches under host-side control flow are not supported")
        if kind == "Bind" and str(node.var.ty).startswith(("int", "uint")):
            binds.append((node.var, node.value))
        if _is_launch(node):
            args, tags = list(node.args), [str(t) for t in node.attrs.launch_params]
            unknown = [t for t in tags if not t.startswith(("blockIdx.", "threadIdx."))]
            if unknown:
                raise MestError(f"unsupported kernel launch parameters {unknown} (dynamic shared memory?)")
            values = args[len(args) - len(tags) :]
            extents = dict(zip(tags, values, strict=True))
            launches.append(
                Launch(
                    kernel=str(args[0].value),
                    operands=args[1 : len(args) - len(tags)],
                    grid={t[-1]: v for t, v in extents.items() if t.startswith("blockIdx.")},
                    threads={t[-1]: v for t, v in extents.items() if t.startswith("threadIdx.")},
                )
            )
    return launches, binds


class OpenCLFunction:
    """A PrimFunc compiled by TVM for an OpenCL preset, callable through our OpenCL host.

    Call it with the PrimFunc's arguments in PrimFunc order (numpy arrays or CPU tensors);
    it returns every argument after the call, so outputs are read at their position.
    """

    def __init__(
        self, func: tvm.tirx.PrimFunc | tvm.IRModule, preset: str | Preset = "mali", context: Context | None = None
    ) -> None:
        spec = preset if isinstance(preset, Preset) else load_preset(preset)
        if spec.target.get("kind") != "opencl":
            raise MestError(f"target preset {spec.name!r} is not an OpenCL target")
        mod = func if isinstance(func, tvm.IRModule) else tvm.IRModule({"main": func})
        funcs = [f for _, f in mod.functions.items()]
        if len(funcs) != 1:
            raise MestError(f"expected one PrimFunc, the module has {len(funcs)}")
        self.func = funcs[0]
        target = spec.tvm_target(host=_HOST)
        executable = tvm.compile(mod, target=target)
        self.source: str = executable.mod.imports[0].inspect_source()
        self.signatures = parse_kernel_signatures(self.source)
        self.launches, self._binds = _launches(_lower_host(mod, target))
        if not self.launches:
            raise MestError("the function launches no OpenCL kernel (is it bound to blockIdx/threadIdx?)")
        self._params = {p.name: i for i, p in enumerate(self.func.params)}
        self.context = context or Context()
        program = self.context.build(self.source)
        self._kernels = {launch.kernel: program.kernel(launch.kernel) for launch in self.launches}

    def _shape_values(self, arrays: list[np.ndarray] | list[Buffer]) -> dict[str, int]:
        """Symbolic shape variable name -> value, checking every argument's shape and dtype."""
        if len(arrays) != len(self.func.params):
            raise MestError(f"expected {len(self.func.params)} arguments, got {len(arrays)}")
        values: dict[str, int] = {}
        for param, array in zip(self.func.params, arrays, strict=True):
            dims = list(param.shape)
            if array.ndim != len(dims) or array.dtype != np.dtype(str(param.dtype)):
                want, got = f"{len(dims)}-d {param.dtype}", f"{array.ndim}-d {array.dtype}"
                raise MestError(f"argument {param.name}: expected {want}, got {got}")
            for dim, size in zip(dims, array.shape, strict=True):
                expected = values.setdefault(dim.name, size) if isinstance(dim, tvm.tirx.Var) else int(dim)
                if expected != size:
                    raise MestError(f"argument {param.name}: shape {array.shape} does not match {dims}")
        return values

    def _evaluator(self, values: dict[str, int]) -> tvm.sym.Analyzer:
        analyzer = tvm.sym.Analyzer()
        for var, value in self._binds:
            if var.name in values:  # the host reads shapes from the tensors: bind what we know
                analyzer.bind(var, tvm.tirx.IntImm(str(var.ty), values[var.name]))
            else:
                analyzer.bind(var, value)
        return analyzer

    def _run(self, buffers: list[Buffer]) -> float:
        analyzer = self._evaluator(self._shape_values(buffers))

        def integer(expr: Any) -> int:
            if isinstance(expr, int):
                return expr
            out = analyzer.simplify(expr)
            if not isinstance(out, tvm.tirx.IntImm):
                raise MestError(f"cannot evaluate launch value {expr} (got {out})")
            return int(out.value)

        seconds = 0.0
        for launch in self.launches:
            params = self.signatures.get(launch.kernel)
            if params is None or len(params) != len(launch.operands):
                raise MestError(f"kernel {launch.kernel}: the source's signature does not match TVM's launch")
            args: list[Any] = []
            for param, operand in zip(params, launch.operands, strict=True):
                if param.is_buffer:
                    args.append(buffers[self._buffer_index(operand, launch.kernel)])
                else:
                    args.append(param.dtype.type(integer(operand)))
            axes = sorted(set(launch.grid) | set(launch.threads))
            local = [integer(launch.threads.get(a, 1)) for a in axes]
            glob = [integer(launch.grid.get(a, 1)) * size for a, size in zip(axes, local, strict=True)]
            if min(glob, default=1) > 0:  # an empty batch launches nothing (OpenCL rejects size 0)
                seconds += self.context.launch(self._kernels[launch.kernel], args, glob, local)
        return seconds

    def _buffer_index(self, operand: Any, kernel: str) -> int:
        name = operand.args[0].name if getattr(operand, "args", None) else getattr(operand, "name", None)
        if name not in self._params:
            raise MestError(f"kernel {kernel}: operand {operand} is not a parameter of the function")
        return self._params[name]

    def __call__(self, *args: Any) -> list[np.ndarray]:
        """Copy the arguments to the device, run every kernel, copy every argument back."""
        buffers = [self.context.buffer(as_numpy(a)) for a in args]
        self._run(buffers)
        return [b.read() for b in buffers]

    def launch(self, *buffers: Buffer) -> float:
        """Run every kernel on arguments already on the device (nothing is copied); device seconds."""
        return self._run(list(buffers))

    def time(self, *args: Any, number: int = 3) -> float:
        """Mean device seconds per call (sum over the function's kernels; transfers excluded)."""
        buffers = [self.context.buffer(as_numpy(a)) for a in args]
        self._run(buffers)  # warm-up: first launches include the driver's lazy setup
        return sum(self._run(buffers) for _ in range(number)) / number


def compile_opencl(
    func: tvm.tirx.PrimFunc | tvm.IRModule, preset: str | Preset = "mali", context: Context | None = None
) -> OpenCLFunction:
    """Compile a GPU-scheduled PrimFunc (or one-function IRModule) for an OpenCL preset and load it.

    Raises:
        MestError: not an OpenCL preset, no kernel launched, or an unsupported launch.
        OpenCLError: no OpenCL device, or the driver rejected TVM's source (with its build log).
    """
    return OpenCLFunction(func, preset, context)
