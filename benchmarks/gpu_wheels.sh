#!/usr/bin/env bash
# Prepares, HERE (where PyPI answers), the wheels the GPU machine lacks, in parts it can carry.
#
#   bash benchmarks/gpu_wheels.sh          # then the two `run` calls in benchmarks/gpu_check.sh
#
# The GPU machine (Python 3.12, torch 2.11+cu130, no network) lacks apache-tvm, apache-tvm-ffi,
# xgboost-cpu and tornado. Their cp312 manylinux wheels come to about 110 MB (apache-tvm alone
# 100.5 MB), over the 64 MiB one call can carry. Recompressing does not change the number of calls:
# xz -6 of the unpacked apache-tvm wheel is 66.0 MB, xz -9e --x86 61.5 MB (measured here; 2 to 4
# minutes of CPU), still over ~60 MiB with apache-tvm-ffi beside it. So the wheels go as they are:
# one tar of them, cut into parts of PART_MIB MiB, each in .whl/partN/ (what call N carries),
# with the tar's SHA-256 and the number of parts beside each part.
#
# .whl/ is git-ignored; .whl/download/ keeps the wheels (a second run downloads nothing new).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
PART_MIB=${PART_MIB:-56}  # 56 MiB + the working tree (~2 MiB) stays clear of the 64 MiB a call carries
WHEELS=(apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 xgboost-cpu==3.2.0 tornado==6.6.1)

mkdir -p .whl/download
rm -rf .whl/part* .whl/wheels.tar*
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 \
  --platform manylinux1_x86_64 -d .whl/download "${WHEELS[@]}"

# Only the pinned versions: an older download of another version would make pip install both.
files=()
for spec in "${WHEELS[@]}"; do
  name=${spec%%==*}
  version=${spec#*==}
  found=(.whl/download/"${name//-/_}-${version}"-*.whl)
  [ -f "${found[0]}" ] || { echo "error: no wheel for $spec in .whl/download" >&2; exit 1; }
  files+=("$(basename "${found[0]}")")
done

tar -C .whl/download -cf .whl/wheels.tar "${files[@]}"
sha=$(sha256sum .whl/wheels.tar | cut -d' ' -f1)
split -b "${PART_MIB}M" -d -a 1 --numeric-suffixes=1 .whl/wheels.tar .whl/wheels.tar.
rm .whl/wheels.tar
parts=$(ls .whl/wheels.tar.* | wc -l)
for piece in .whl/wheels.tar.*; do
  n=${piece##*.}
  mkdir -p ".whl/part$n"
  mv "$piece" ".whl/part$n/"
  echo "$sha" >".whl/part$n/wheels.tar.sha256"
  echo "$parts" >".whl/part$n/wheels.tar.parts"
done

echo "wheels: ${files[*]}"
for dir in .whl/part*; do
  echo "$dir: $(du -sm "$dir" | cut -f1) MiB"
done
echo "the GPU check takes $parts call(s): see the comment at the top of benchmarks/gpu_check.sh"
