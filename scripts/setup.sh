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
# llama.cpp's converter, gguf-py and tools (llama-quantize, llama-imatrix, llama-perplexity) from the sdist of the
# installed llama-cpp-python: downloaded by pip and CMake-built once (CPU, -j2; about 13 minutes on 2 cores), cached
# under .venv/llama.cpp (or $CPT_LLAMA_CPP_CACHE). Offline: pass a carried sdist, `... llama_tools --sdist FILE`.
if ! command -v cmake >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && apt-get install -y -qq cmake g++ >/dev/null
fi
python -m cpt_assets.lib.llama_tools --jobs "${CPT_BUILD_JOBS:-2}"
# OCR for image-only scans (sources with `ocr: true`) uses Debian's tesseract; optional, best effort.
if ! command -v tesseract >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq tesseract-ocr tesseract-ocr-eng >/dev/null) || echo "note: tesseract-ocr not installed; OCR tests will be skipped"
fi
