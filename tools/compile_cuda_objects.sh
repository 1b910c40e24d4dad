#!/usr/bin/env bash
# Compile every csrc/cuda/*.cu to an object file with nvcc, so that a CUDA syntax or type error
# cannot land even on machines without a GPU (CI calls this). Nothing is linked or loaded.
#
#   tools/compile_cuda_objects.sh [OUT_DIR]     (default build/cuda-objects)
#
# Skips (exit 0, with a message) when nvcc or a CUDA build of torch is missing.
# PYTHON selects the interpreter (default: python); TORCH_CUDA_ARCH_LIST the archs (default 7.5:
# one arch is enough to type-check the device code). Honours CUDA_HOME.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/build/cuda-objects}"
PY="${PYTHON:-$(command -v python || command -v python3)}"

NVCC=""
if [[ -n "${CUDA_HOME:-}" && -x "$CUDA_HOME/bin/nvcc" ]]; then
  NVCC="$CUDA_HOME/bin/nvcc"
elif command -v nvcc >/dev/null 2>&1; then
  NVCC="$(command -v nvcc)"
elif [[ -x /usr/local/cuda/bin/nvcc ]]; then
  NVCC=/usr/local/cuda/bin/nvcc
fi
if [[ -z "$NVCC" ]]; then
  echo "compile_cuda_objects: nvcc not found; skipping the CUDA compile check"
  exit 0
fi

# Include paths, ABI flag and C++ standard of the installed torch (empty if it lacks CUDA).
FLAGS="$("$PY" - <<'EOF' || true
try:
    import torch
except ImportError:
    raise SystemExit(0)
from torch.utils import cpp_extension as ce
if not (torch.version.cuda and torch.cuda._is_compiled()):
    raise SystemExit(0)
flags = [f"-I{p}" for p in ce.include_paths()]
flags.append(f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
import os
aten = os.path.join(ce.include_paths()[0], "ATen", "ATen.h")
flags.append("-std=c++20" if "C++20" in open(aten).read() else "-std=c++17")  # as torch needs
print(" ".join(flags))
EOF
)"
if [[ -z "$FLAGS" ]]; then
  echo "compile_cuda_objects: $PY has no torch with CUDA support; skipping the CUDA compile check"
  exit 0
fi

ARCHS="${TORCH_CUDA_ARCH_LIST:-7.5}"
GENCODE=()
for a in ${ARCHS//;/ }; do
  a="${a%+PTX}"
  n="${a/./}"
  GENCODE+=("-gencode=arch=compute_${n},code=sm_${n}")
done

mkdir -p "$OUT"
compile() {  # one .cu -> .o (run in parallel: one job per file)
  local cu="$1" obj="$OUT/$(basename "${1%.cu}").o"
  echo "compile_cuda_objects: $NVCC -c $(realpath --relative-to="$ROOT" "$cu") -> $obj"
  # shellcheck disable=SC2086
  "$NVCC" -c "$cu" -o "$obj" $FLAGS "${GENCODE[@]}" -O1 \
    -DTORCH_EXTENSION_NAME=_C -DTORCH_API_INCLUDE_EXTENSION_H \
    -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__ \
    -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__ \
    --expt-relaxed-constexpr -Xcompiler -fPIC
}
shopt -s nullglob
pids=()
for cu in "$ROOT"/csrc/cuda/*.cu; do
  compile "$cu" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=1
done
if [[ $status -ne 0 ]]; then
  echo "compile_cuda_objects: FAILED"
else
  echo "compile_cuda_objects: all CUDA sources compiled (${#pids[@]} files)"
fi
exit $status
