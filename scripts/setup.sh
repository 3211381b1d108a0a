#!/usr/bin/env bash
# Creates .venv and installs cpt_assets with its test tools; safe to run again (it only installs what is missing).
# torch goes first and pinned: on these machines torch==2.13.0 is a CPU build; an unpinned torch would pull a
# multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.cpt-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -e ".[dev]"
  touch "$stamp"
fi
# OCR for image-only scans (sources with `ocr: true`) uses Debian's tesseract; optional, best effort.
if ! command -v tesseract >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq tesseract-ocr tesseract-ocr-eng >/dev/null) || echo "note: tesseract-ocr not installed; OCR tests will be skipped"
fi
# General-text control set (issue #10): Debian's fortunes (BSD fortune(6) cookie files, BSD licence).
if [ ! -f /usr/share/games/fortunes/literature ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq fortunes fortunes-min >/dev/null) || echo "note: fortunes not installed; control_text will fail naming ControlTextConfig.directory"
fi
