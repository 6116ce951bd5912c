#!/usr/bin/env bash
# Device check on a machine with a GPU or TPU (under 10 minutes): Pallas kernel parity and the
# training presets' step time and MFU, written to benchmarks/results/<date>-<device>-device-check.{json,md}.
# Run from anywhere:  bash benchmarks/device_check.sh  [--steps N] [--skip-presets]
# On a CPU-only machine it prints "no accelerator: nothing measured" and writes nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c "import jaxdiv" 2>/dev/null; then
  "$PYTHON" -m pip install -e ".[bench]"
fi
exec timeout 590 "$PYTHON" -m benchmarks.device_check "$@"
