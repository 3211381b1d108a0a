#!/usr/bin/env bash
# Creates .venv and installs cpt_assets with its test tools; safe to run again (it only installs what is missing).
# torch goes first and pinned: on these machines torch==2.13.0 is a CPU build; an unpinned torch would pull a
# multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# A CUDA machine (nvidia-smi answers) keeps the torch it has: the venv sees the system's packages and the `gpu`
# extra (bitsandbytes, liger-kernel) is added. CPT_WHEELS=DIR installs from a local wheel folder with no index
# (a machine with no registry: scripts/device_bundle.sh builds one).
cuda=0
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then cuda=1; fi
if [ ! -x .venv/bin/python ]; then
  if [ "$cuda" = 1 ]; then
    "$PYTHON" -m venv --system-site-packages .venv
    # $PYTHON may itself be a venv's (an image's torch venv): make its packages visible too, torch first of all.
    site=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    "$PYTHON" -c 'import torch' 2>/dev/null && echo "$site" >"$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/cpt_machine_site.pth"
  else
    "$PYTHON" -m venv .venv
  fi
fi
. .venv/bin/activate
pip_args=(-q)
if [ -n "${CPT_WHEELS:-}" ]; then pip_args+=(--no-index --find-links "$CPT_WHEELS" --no-build-isolation); fi
stamp=.venv/.cpt-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -n "${CPT_WHEELS:-}" ] || python -m pip install -q --upgrade pip
  if [ "$cuda" = 1 ]; then
    python -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null || python -m pip install "${pip_args[@]}" torch
    python -m pip install "${pip_args[@]}" -e ".[gpu]"
  else
    python -m pip install "${pip_args[@]}" "torch==2.13.0"
    python -m pip install "${pip_args[@]}" -e ".[dev]"
  fi
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
# The slow-tier browser test (cpt_assets_tests/defs/test_ui_browser.py) drives Debian's Chromium through playwright
# (pip, in the dev extra); `playwright install` is never run, so no browser is downloaded.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "note: chromium not installed; the browser test will fail"
fi
# General-text control set (issue #10): Debian's fortunes (BSD fortune(6) cookie files, BSD licence).
if [ ! -f /usr/share/games/fortunes/literature ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq fortunes fortunes-min >/dev/null) || echo "note: fortunes not installed; control_text will fail naming ControlTextConfig.directory"
fi
