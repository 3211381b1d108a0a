#!/usr/bin/env bash
# The default test suite (offline, real PDFs from ../shared/corpus or CPT_CORPUS). Extra args go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the end-to-end tier.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CPT_CORPUS=${CPT_CORPUS:-$(cd .. && pwd)/shared/corpus}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# torch threads spin-wait by default; on a 2-core machine shared with other work that slows them ~100x
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec .venv/bin/python -m pytest "$@"
