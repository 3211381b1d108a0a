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
# The slow-tier browser test (cpt_assets_tests/defs/test_ui_browser.py) drives Debian's Chromium through playwright
# (pip, in the dev extra); `playwright install` is never run, so no browser is downloaded.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "note: chromium not installed; the browser test will fail"
fi
