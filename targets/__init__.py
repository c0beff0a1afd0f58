"""Target presets: one JSON file per target (`host`, `arm`, `mali`, `adreno`, `cuda`).

A preset is data: the TVM target dict, its host, the cross compiler, and how kernels are measured.
The compiler side reads them with `importlib.resources`; a new target is one new file.
"""
