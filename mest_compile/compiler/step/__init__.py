"""The compiled training step: a whole SGD step of a model (forward, loss, gradients, optimizer) in TVM.

`trace` exports the step from PyTorch in train mode into Relax; `sparse` turns each masked conv
into its scheme's forward kernel with a registered gradient that calls the input-gradient and
masked weight-gradient kernels, the sparse structure as runtime buffers sized by a capacity;
`build` appends the gradient and the optimizer and compiles one `train_step` function; `state`
keeps the step's arrays and moves them to and from a PyTorch model (packing, repacking); `engine`
runs it as the trainer's `--engine tvm`.
"""
