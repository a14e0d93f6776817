#!/usr/bin/env bash
# Runs on the GPU machine (after `bash tools/gpu/prepare.sh` here and `. .gl/setup.sh` there): quickstart, the test suites including the
# extended matrix, then the benchmark next to PyTorch SDPA, all in one device command.
# Results go to $OUT (device.txt, quickstart.txt, tests.txt, bench.{txt,csv,json,png}, sdpa.json).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export CI=true
bin() { ls .gpu-bin/"$1"-* 2>/dev/null | head -1 || true; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; date -u; } > "$OUT/device.txt" 2>&1
[ "${SKIP_QUICKSTART:-0}" = 1 ] || { ./.gpu-bin/quickstart; ./.gpu-bin/quickstart --prompt 1000 --decode 3 --f32; ./.gpu-bin/modes; } > "$OUT/quickstart.txt" 2>&1
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  # The one integration-test binary (quick suite + the #[ignore]d extended matrix), then the
  # unit tests (naga translation and layout checks).
  for t in it quantkv; do
    b=$(bin $t); [ -n "$b" ] && timeout ${TEST_TIMEOUT:-420} "$b" --include-ignored --test-threads ${TEST_THREADS:-4} 2>&1 | grep -E "^test |test result|panicked|poisoned|^\|"
  done > "$OUT/tests.txt"
fi
g=$(bin gpu)
"$g" --bench --shapes-json /tmp/shapes.json --shapes-only ${BENCH_FILTER:+--filter $BENCH_FILTER} ${BENCH_MODES:+--modes $BENCH_MODES} > /dev/null
timeout ${SDPA_TIMEOUT:-240} python3 benches/sdpa.py /tmp/shapes.json "$OUT/sdpa.json" > "$OUT/bench.txt" 2>&1
timeout ${BENCH_TIMEOUT:-400} "$g" --bench --repeat ${BENCH_REPEAT:-3} ${BENCH_ARGS:-} --sdpa "$OUT/sdpa.json" --out "$OUT" ${BENCH_FILTER:+--filter $BENCH_FILTER} ${BENCH_MODES:+--modes $BENCH_MODES} >> "$OUT/bench.txt" 2>&1
python3 benches/chart.py "$OUT" >> "$OUT/bench.txt" 2>&1
tail -5 "$OUT/bench.txt"
