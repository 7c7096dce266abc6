#!/usr/bin/env bash
# Builds `signrt-train --features cuda` on a machine with no GPU and no CUDA installed: NVIDIA's CUDA
# 13.4 toolchain comes from PyPI wheels into a private prefix, candle's kernels are compiled to PTX for
# each compute capability asked for, and the binaries land in target/cuda/bin/signrt-train-sm<CAP>.
#
#   trainer/scripts/build-cuda.sh                  # sm_80 and sm_90 (SIGNRT_CUDA_CAPS=80,90)
#   SIGNRT_CUDA_CAPS=87 trainer/scripts/build-cuda.sh   # Jetson Orin
#
# Why these pins: candle-core 0.11.1 uses cudarc 0.19.10, which knows CUDA up to 13.4 and reads the
# version from `nvcc --version`; the 13.x `nvidia-cuda-nvcc` wheel has the whole compiler (the 12.x
# `-cu12` one only ptxas), and the 13.x wheels unpack into one tree, `nvidia/cu13`, laid out as a
# CUDA_HOME. What the wheels lack is made here: unversioned library names for the linker, and the
# driver's `libcuda.so`, which only a driver installs: a stub that exports every `cu*` name of the
# toolkit's cuda.h, with the driver's soname, so that the real driver is the one loaded at run time.
# PTX for compute capability N runs on N and newer GPUs (the driver compiles it at first use), so
# sm_80 alone covers Ampere, Orin and Hopper; candle builds sm_90 as `sm_90a`, Hopper's own features,
# which runs on Hopper only.
#
# Environment: SIGNRT_CUDA_PREFIX (default ~/.cache/signrt-cuda/13.4.92), SIGNRT_CUDA_CAPS,
# SIGNRT_CUDA_PROFILE (default release), CARGO_TARGET_DIR (default target/cuda).
set -euo pipefail
cd "$(dirname "$0")/../.."

version=13.4.92
prefix=${SIGNRT_CUDA_PREFIX:-${XDG_CACHE_HOME:-$HOME/.cache}/signrt-cuda/$version}
caps=${SIGNRT_CUDA_CAPS:-80,90}
profile=${SIGNRT_CUDA_PROFILE:-release}
target_dir=${CARGO_TARGET_DIR:-target/cuda}
wheels=(
  "nvidia-cuda-nvcc==$version" "nvidia-nvvm==$version" "nvidia-cuda-runtime==$version"
  "nvidia-cuda-crt==$version" "nvidia-cuda-nvrtc==$version" "nvidia-cuda-cccl==13.3.5.0.6"
  "nvidia-cublas==13.4.3.11" "nvidia-curand==10.4.4.72"
)
start=$(date +%s)

# 1. The toolchain, once per prefix.
cuda=$prefix/cuda
if ! [ -x "$cuda/bin/nvcc" ]; then
  echo "+ installing the CUDA $version wheels into $prefix" >&2
  python3 -m venv "$prefix/venv"
  "$prefix/venv/bin/python3" -m pip install -q --disable-pip-version-check --no-deps "${wheels[@]}"
  site=$("$prefix/venv/bin/python3" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  ln -sfn "$site/nvidia/cu13" "$cuda"
fi
"$cuda/bin/nvcc" --version | grep -q "release ${version%.*}," || {
  echo "error: $cuda/bin/nvcc is not CUDA ${version%.*}" >&2
  exit 1
}

# 2. What the linker needs and no wheel has.
for lib in cudart cublas cublasLt curand nvrtc; do
  versioned=$(cd "$cuda/lib" && ls "lib$lib.so."* | grep -v builtins | head -1)
  ln -sf "$versioned" "$cuda/lib/lib$lib.so"
done
if ! [ -f "$cuda/lib/stubs/libcuda.so" ]; then
  mkdir -p "$cuda/lib/stubs"
  stub_c=$(mktemp --suffix .c)
  grep -oE '\bcu[A-Z][A-Za-z0-9_]*\b' "$cuda/include/cuda.h" | sort -u | sed 's/.*/void &(void) {}/' > "$stub_c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$cuda/lib/stubs/libcuda.so" "$stub_c"
  rm -f "$stub_c"
fi

# 3. One build per compute capability, in one target folder (only candle's kernels and what depends
#    on them are rebuilt for the second).
export CUDA_HOME=$cuda CUDA_PATH=$cuda PATH=$cuda/bin:$PATH CUDARC_CUDA_VERSION=13040
export LIBRARY_PATH=$cuda/lib:$cuda/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}
mkdir -p "$target_dir/bin"
for cap in ${caps//,/ }; do
  echo "+ cargo build --profile $profile -p signrt-trainer --features cuda (CUDA_COMPUTE_CAP=$cap)" >&2
  t0=$(date +%s)
  CUDA_COMPUTE_CAP=$cap cargo build --profile "$profile" -p signrt-trainer --features cuda \
    --bin signrt-train --target-dir "$target_dir"
  dir=$profile
  [ "$profile" = dev ] && dir=debug
  out=$target_dir/bin/signrt-train-sm$cap
  cp "$target_dir/$dir/signrt-train" "$out.tmp" && mv "$out.tmp" "$out"
  ptx=$(strings "$out" | grep -oE '^\.target sm_[0-9]+a?' | sort | uniq -c | tr -s ' ' | paste -sd, -)
  needed=$(readelf -d "$out" | grep -oE 'lib(cuda|cudart|cublas|cublasLt|curand|nvrtc)\.so[.0-9]*' | sort -u | paste -sd' ' -)
  echo "built $out in $(( $(date +%s) - t0 )) s: $(du -h "$out" | cut -f1), PTX targets: ${ptx:-none found}; links $needed"
done
echo "total $(( $(date +%s) - start )) s (CUDA $version from PyPI, in $prefix)"
echo "run where an NVIDIA driver is installed, with CUDA's libraries on the library path:"
echo "  LD_LIBRARY_PATH=$cuda/lib $target_dir/bin/signrt-train-sm<CAP> train --device cuda ..."
