# CPU image of mest-compile: the C++ toolchain TVM links host kernels with (the Makefile's
# compiler-deps), and the aarch64 cross toolchain (plus qemu-user to run what it builds) for ARM targets.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      g++ make gcc-aarch64-linux-gnu g++-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user \
 && rm -rf /var/lib/apt/lists/*

# The package is installed as a wheel (`pip install .`, not editable) from exactly what is copied
# here; tests/compile/test_wheel.py builds the wheel from these COPY lines, installs it outside the
# checkout and compiles a kernel with it.
WORKDIR /opt/mest-compile
COPY pyproject.toml setup.py README.md Makefile ./
COPY mest_compile ./mest_compile
COPY targets ./targets
COPY schedules ./schedules

# torch first, so the dependency resolver keeps it. Pass the CPU wheel index of PyTorch as
# TORCH_INDEX to avoid the CUDA build (several GB): docker build --build-arg TORCH_INDEX=... .
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=
RUN pip install --no-cache-dir "${TORCH_SPEC}" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} \
 && pip install --no-cache-dir .

# Two CPU threads for TVM's pool unless the user says otherwise (TVM counts physical cores).
ENV TVM_NUM_THREADS=2
WORKDIR /work
ENTRYPOINT ["mest-compile"]
CMD ["--help"]
