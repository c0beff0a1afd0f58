"""Trace a PyTorch model into TVM Relax: `torch.export`, then Relax's exported-program importer.

The trace is what the rewrite pass (`rewrite.py`) reads and what `inspect` shows. Weights stay
function parameters (`keep_params_as_input=True`), so the pass can swap a masked layer's weight
for its packed buffers; buffers such as a `SparseConv2d.mask` become Relax constants (the
importer's choice), recognised by the pass all the same. The batch dimension is symbolic by
default, so one compiled graph serves any batch size.

Example:
    >>> traced = trace(model, torch.randn(2, 3, 32, 32))                 # doctest: +SKIP
    >>> traced.module.show()                                              # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from copy import deepcopy
from dataclasses import dataclass, field

import torch
import tvm
from torch import nn

from mest_compile.errors import MestError, first_line


@dataclass
class Traced:
    """A model imported into Relax, with what the pass needs to know about its parameters.

    Attributes:
        module: the Relax module; `main(x, *params)`.
        param_names: Relax parameter name -> PyTorch name (`"p_conv1_weight"` -> `"conv1.weight"`),
            for every parameter after the user input.
        schemes: PyTorch weight name -> scheme name, for each `SparseConv2d` of the model.
        example_shape: the traced input shape (batch symbolic unless traced static).
    """

    module: tvm.IRModule
    param_names: dict[str, str]
    schemes: dict[str, str] = field(default_factory=dict)
    example_shape: tuple[int, ...] = ()


class _Layer(nn.Module):
    """One conv as a model, so a single `SparseConv2d` traces like a whole network."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _export(model: nn.Module, example: torch.Tensor, dynamic_batch: bool) -> torch.export.ExportedProgram:
    dims = {"x": {0: torch.export.Dim("batch", min=1, max=1 << 16)}} if dynamic_batch else None
    try:
        return torch.export.export(model, (example,), dynamic_shapes=dims)
    except Exception as err:  # noqa: BLE001  (torch.export raises many types; the user needs one line)
        first = first_line(err)
        raise MestError(f"torch.export could not trace the model: {first}") from err


def trace(model: nn.Module, example: torch.Tensor, *, dynamic_batch: bool = True) -> Traced:
    """Export a copy of `model` in eval mode (inference graph) to Relax.

    Args:
        model: a model (or one conv); its `SparseConv2d` layers are the pass's candidates.
        example: one input batch (its shape fixes every dimension but the batch).
        dynamic_batch: keep the batch dimension symbolic.

    Raises:
        MestError: torch.export or the Relax importer rejected the model.
    """
    from tvm.relax.frontend.torch import from_exported_program

    from mest_compile.sparsity.module import sparse_layers

    if isinstance(model, nn.Conv2d):
        model = _Layer(model)
    # A private copy: the importer keeps the parameters' memory (zero-copy), so later in-place
    # updates of the model (an optimizer step, `set_mask_`) would silently change the trace.
    # Backends are not copied: a compiled conv would trace through TVM's own op, not the masked conv.
    backends = {name: layer.backend for name, layer in sparse_layers(model).items()}
    for layer in sparse_layers(model).values():
        layer.backend = None
    try:
        copy = deepcopy(model).eval()  # eval: the inference graph, batch norm on running statistics
    finally:
        for name, layer in sparse_layers(model).items():
            layer.backend = backends[name]
    if dynamic_batch and example.shape[0] < 2:
        # torch.export specialises a dimension traced at size 1; trace with 2, any size runs.
        example = example.expand(2, *example.shape[1:]).contiguous()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecations
            program = _export(copy, example, dynamic_batch)
            module = from_exported_program(program, keep_params_as_input=True)
    except MestError:
        raise
    except Exception as err:  # noqa: BLE001
        raise MestError(f"Relax could not import the exported model: {str(err).strip().splitlines()[0]}") from err
    signature = program.graph_signature
    names = dict(signature.inputs_to_parameters)
    schemes = {name: layer.scheme.name for name, layer in sparse_layers(model).items()}
    return Traced(module=module, param_names=names, schemes=schemes, example_shape=tuple(example.shape))


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of `model` by PyTorch name (what the traced graph's params name).

    A single conv is traced wrapped (`_Layer`), so its names gain the prefix `conv.`.
    """
    owner = _Layer(model) if isinstance(model, nn.Conv2d) else model
    return {**dict(owner.named_parameters()), **dict(owner.named_buffers())}
