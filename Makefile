# Everything a fresh machine needs: `make demo` and `make test` create .venv and install first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch; set TORCH_SPEC= to keep whatever torch the index gives.
TORCH_SPEC ?= torch==2.13.0
# Debian packages the tests need: the C++ toolchain TVM links kernels with, the aarch64 cross
# toolchain and qemu-user (the emulated ARM board), and PoCL (an OpenCL device on the CPU).
SYSTEM_PACKAGES ?= g++ qemu-user gcc-aarch64-linux-gnu ocl-icd-libopencl1 pocl-opencl-icd
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install system-deps demo test clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(if $(TORCH_SPEC),$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)")
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Installs only what is missing, so it is a no-op on a prepared machine and needs no root there.
system-deps:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# MEST Elastic Mutation, 90% block sparsity, on the offline digits set; prints accuracy vs dense.
demo: install system-deps
	rm -rf $(DEMO_OUT)
	$(BIN)/mest-compile train --config configs/demo.yaml --out $(DEMO_OUT) --compare-dense

test: install system-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info runs .pytest_cache
