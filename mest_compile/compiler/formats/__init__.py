"""Packed sparse formats: a legal mask becomes values plus runtime index buffers."""

from mest_compile.compiler.formats.block import BlockFormat, kept_blocks
from mest_compile.compiler.formats.geometry import ConvGeometry

__all__ = ["BlockFormat", "ConvGeometry", "kept_blocks"]
