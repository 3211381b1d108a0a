#!/usr/bin/env bash
# The main job on the embedded default: the default sources (nist, ietf) read offline from the local mirror
# (../shared/corpus unless CPT_MIRROR says otherwise), the offline base model, PDFs to GGUF. Every run lands in the
# Dagster instance under .dagster_home/; `.venv/bin/cpt-ui` shows them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CPT_MIRROR=${CPT_MIRROR:-$(cd .. && pwd)/shared/corpus}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
exec .venv/bin/cpt-pipeline "$@"
