#!/usr/bin/env bash
# flash-attn-4 for a machine that takes at most ~64 MiB a transfer and cannot reach a registry (docs/small_models.md,
# section 89): its CUDA libraries' wheel (nvidia-cutlass-dsl-libs-cu13, 92 MB) goes as an xz tar in two ~32 MB parts.
#   here:   bash recipes/small/fa4_wheels.sh prepare DIR    -> DIR/part1/ (tar part 00), DIR/part2/ (part 01 + wheels)
#   there:  bash recipes/small/fa4_wheels.sh install DIR... -> /tmp/site (each DIR: a part folder that arrived; the
#           tar is unpacked once both parts are in /tmp/fa4), then
#           export PYTHONPATH=/tmp/site:/tmp/site/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH
# (a --target install reads no .pth file, so the CuTe DSL's package folder goes on PYTHONPATH by hand)
set -euo pipefail
VERSION="${FA4_VERSION:-4.0.0b40}" CUTLASS="${CUTLASS_VERSION:-4.8.1}"
case "${1:-}" in
prepare)
  out="$2"; mkdir -p "$out/wheels" "$out/part1" "$out/part2"
  get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --pre -d "$out/wheels" "$@"; }
  get "flash-attn-4==$VERSION" "nvidia-cutlass-dsl==$CUTLASS" "nvidia-cutlass-dsl-libs-base==$CUTLASS" \
    "nvidia-cutlass-dsl-libs-core==$CUTLASS" "nvidia-cutlass-dsl-libs-cu13==$CUTLASS" quack-kernels apache-tvm-ffi \
    torch-c-dlpack-ext
  libs=$(ls "$out"/wheels/nvidia_cutlass_dsl_libs_cu13-*.whl)
  rm -rf "$out/unpacked" && mkdir "$out/unpacked" && (cd "$out/unpacked" && python3 -m zipfile -e "$libs" .)
  tar -C "$out/unpacked" -cf - . | xz -9 -T0 | split -b 32M -d - "$out/cu13.tar.xz.part"
  mv "$out/cu13.tar.xz.part00" "$out/part1/" && mv "$out"/cu13.tar.xz.part0[1-9] "$out/part2/"
  find "$out/wheels" -name '*.whl' ! -name 'nvidia_cutlass_dsl_libs_cu13-*' -exec cp {} "$out/part2/" \;
  rm -rf "$out/unpacked"; du -sh "$out/part1" "$out/part2"
  ;;
install)
  shift; mkdir -p /tmp/fa4 /tmp/site
  for d in "$@"; do cp "$d"/* /tmp/fa4/; done
  if ls /tmp/fa4/cu13.tar.xz.part01 > /dev/null 2>&1 && [ ! -d /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass ]; then
    # the wheels first: pip's --upgrade into a target folder replaces the nvidia_cutlass_dsl folder they share
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site /tmp/fa4/*.whl
    cat /tmp/fa4/cu13.tar.xz.part0* | xz -d -T0 | tar -C /tmp/site -xf -
  fi
  ls -d /tmp/site/nvidia_cutlass_dsl/dsl_packages/cutlass 2>/dev/null || echo "waiting for the other part"
  ;;
*) echo "usage: $0 prepare DIR | install DIR..." >&2; exit 2 ;;
esac
