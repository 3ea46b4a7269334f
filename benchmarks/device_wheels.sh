#!/usr/bin/env bash
# The pure-Python packages the project needs that a bare GPU image may lack (ml-collections,
# tensorboardX), as wheels in .whl/ (ignored by git), to carry to a machine without network:
#   benchmarks/device_wheels.sh
#   # there: python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   #        PYTHONPATH=/tmp/site python3 benchmarks/device_check.py --out $OUT --budget_s 420
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl ml-collections tensorboardX
ls .whl
