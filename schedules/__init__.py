"""Schedule spaces per scheme x target family, and shipped tuning records (`records/`).

Compiler-side code: modules here may import tvm. They are loaded by the tuner and the kernel
builder, never by the training side.
"""
