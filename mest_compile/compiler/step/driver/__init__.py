"""The board side of an exported training bundle (`mest-compile export --train`): numpy and TVM's runtime only.

This package is copied into the bundle as `mest_driver` and runs on a board that has neither
PyTorch nor mest-compile: `python -m mest_driver` trains with the bundle's compiled `train_step`
(`loop.py`), runs MEST's Elastic Mutation on the weights it holds (`schemes.py`) and repacks the
kernels' index buffers for the new masks (`formats.py`), with the same executable. Its modules
import only numpy, the standard library, TVM's runtime and each other (relatively), so that the
copy works anywhere.
"""
