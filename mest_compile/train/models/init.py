"""MEST's weight initialisation, shared by every model here."""

from __future__ import annotations

from torch import nn


def mest_init_(model: nn.Module) -> nn.Module:
    """Initialise `model` in place the way MEST's `weights_init` does.

    Convolutions get `kaiming_normal_(fan_out, relu)`, linear layers N(0, 0.01) with a zero
    bias, batch norms weight 1 and bias 0. The narrow N(0, 0.01) head starts every class logit
    near zero, which is what the reference's learning-rate recipe was tuned with.

    Returns:
        `model`, for chaining.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d) and module.affine:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return model
