# Everything a fresh machine needs: `make demo` and `make test` create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; set TORCH_SPEC= to keep whatever torch the index gives.
TORCH_SPEC ?= torch==2.13.0
# Debian packages, by who needs them. The compiler links host kernels with the C++ toolchain
# (`--compiled` training, compile_model, tune, the demo's benchmark).
COMPILER_PACKAGES ?= g++
# The emulated tests add the aarch64 cross toolchain and qemu-user (the emulated ARM board), and
# PoCL (an OpenCL device on the CPU).
EMULATION_PACKAGES ?= qemu-user gcc-aarch64-linux-gnu ocl-icd-libopencl1 pocl-opencl-icd
# nvcc for the CUDA compile test (PTX and cubin, no GPU needed), from PyPI when the machine has
# none: one CUDA release throughout (a newer nvidia-nvvm than nvcc makes ptxas reject the PTX). ~250 MB.
NVCC_WHEELS ?= nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-cuda-runtime==13.0.96
CUDA_TOOLKIT := $(VENV)/cuda-toolkit
NVCC_HOME := $(abspath $(CUDA_TOOLKIT))/nvidia/cu13
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install compiler-deps test-deps nvcc demo test clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Installs only the Debian packages that are missing: a no-op on a prepared machine, no root needed there.
define apt_install
	@missing=$$(for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
endef

compiler-deps:
	$(call apt_install,$(COMPILER_PACKAGES))

test-deps: nvcc
	$(call apt_install,$(COMPILER_PACKAGES) $(EMULATION_PACKAGES))

# Nothing when nvcc is on PATH or under CUDA_HOME; else NVIDIA's wheels into $(CUDA_TOOLKIT)
# (outside site-packages: nothing imports them), which `test` then names as CUDA_HOME.
nvcc: $(STAMP)
	@if ! command -v nvcc >/dev/null && [ ! -x "$${CUDA_HOME:-/nonexistent}/bin/nvcc" ] \
		&& [ ! -x $(NVCC_HOME)/bin/nvcc ]; then \
		echo "installing nvcc from PyPI into $(CUDA_TOOLKIT)"; \
		$(BIN)/python -m pip install --quiet --target $(CUDA_TOOLKIT) $(NVCC_WHEELS); \
	fi

# MEST Elastic Mutation, 90% block sparsity, on the offline digits set; prints accuracy vs dense.
# Then the compiler's job: ResNet-32's block-sparse convs and its whole training step compiled
# (--engine tvm) against dense PyTorch, each side in its own process, on a CIFAR-sized batch.
DEMO_BENCH ?= --scheme block --sparsity 0.9 --reps 5 --rounds 2
demo: install compiler-deps
	rm -rf $(DEMO_OUT)
	$(BIN)/mest-compile train --config configs/demo.yaml --out $(DEMO_OUT) --compare-dense
	$(BIN)/mest-compile bench $(DEMO_BENCH)

test: install test-deps
	@if ! command -v nvcc >/dev/null && [ -z "$${CUDA_HOME:-}" ] && [ -x $(NVCC_HOME)/bin/nvcc ]; then \
		export CUDA_HOME=$(NVCC_HOME); fi; \
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info runs .pytest_cache
