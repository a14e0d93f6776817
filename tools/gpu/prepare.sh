#!/usr/bin/env bash
# Stages what a run on the GPU machine needs (it has the NVIDIA driver but no Vulkan loader and
# no Rust toolchain), inside the checkout, both git-ignored through .git/info/exclude:
#   .gl/       the Vulkan loader package and setup.sh (tools/gpu/setup.sh)
#   .gpu-bin/  the examples, benches and test binaries, built with the stripped `gpu` profile
# Usage, from the project root:  bash tools/gpu/prepare.sh
# Then, on the GPU machine:      . .gl/setup.sh; bash benches/run_gpu.sh
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
for d in /.gl/ /.gpu-bin/; do
  grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude
done
mkdir -p .gl .gpu-bin
if ! ls .gl/libvulkan1_*.deb >/dev/null 2>&1; then
  mkdir -p /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  # shellcheck disable=SC2086
  apt-get $o update -qq
  # shellcheck disable=SC2086
  (cd .gl && apt-get $o download libvulkan1 2>&1 | tail -1)
fi
cp tools/gpu/setup.sh .gl/setup.sh
cargo build --profile gpu --examples --benches --tests --message-format=json-render-diagnostics \
  | python3 -c '
import json, os, shutil, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    exe = m.get("executable") if m.get("reason") == "compiler-artifact" else None
    if exe:
        dst = os.path.join(".gpu-bin", os.path.basename(exe))
        shutil.copy2(exe, dst)
        print("staged", os.path.basename(exe), os.path.getsize(dst) // (1 << 20), "MiB")
'
du -sh .gl .gpu-bin
