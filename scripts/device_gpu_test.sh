#!/usr/bin/env bash
# The `gpu` tests (cpt_assets_tests/defs/test_gpu_smoke.py: lora_adapter and eval_report materialised through
# Dagster on CUDA, tiny model) on a CUDA machine with no package registry, in one device call: far less to carry
# than the main job's bundle (scripts/device_bundle.sh), for when device time is short.
#   here:   bash scripts/device_gpu_test.sh bundle   # .carry/gputest/site.tar.xz and .carry/gputest/tokenizer
#   there:  bash scripts/device_gpu_test.sh run      # carrying .carry/gputest, .carry/corpus and .carry/fortunes
#                                                    # (scripts/device_bundle.sh makes those two)
# The packages the image lacks are unpacked here (pip --target for Python 3.12, --no-deps) and travel as one xz
# tarball (about 45 MB; the wheels are 69 MB) to sit on PYTHONPATH beside the image's torch, transformers, peft
# and accelerate; the real SmolLM2 tokenizer travels as its extracted HF files.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
case "${1:-}" in
bundle)
  version() { "$root/.venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
  plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform any)
  for n in 2_17 2_24 2_27 2_28; do plat+=(--platform "manylinux_${n}_x86_64"); done
  plat+=(--platform manylinux2014_x86_64)
  get() { "$root/.venv/bin/python" -m pip download -q --no-deps "${plat[@]}" "$@" 2>&1 | grep -v '^WARNING: Location' || true; }
  rm -rf .carry/gputest && mkdir -p .carry/gputest/wheels
  (cd .carry/gputest/wheels && get "duckdb==$(version duckdb)" "pymupdf==$(version pymupdf)")
  # dagster's own needs that the image lacks (the device README's KINDS.md lists the image), and the project's,
  # at the versions this checkout runs with
  pins() { for name in "$@"; do echo "$name==$(version "$name")"; done; }
  mapfile -t needs < <(pins dagster dagster-pipes dagster-shared alembic annotated-types antlr4-python3-runtime \
    coloredlogs docstring-parser grpcio-health-checking humanfriendly mako pathlib-abc platformdirs pydantic \
    pydantic-core python-dotenv pytz sqlalchemy structlog tomli tomlkit toposort typing-inspection tzdata \
    universal-pathlib watchdog nltk datasketch defusedxml trl datasets dill multiprocess gguf)
  (cd .carry/gputest/wheels && get "${needs[@]}" "liger-kernel==0.8.5")
  site=$(mktemp -d)
  "$root/.venv/bin/python" -m pip install -q --no-deps --no-compile --target "$site/site" "${plat[@]}" \
    .carry/gputest/wheels/*.whl 2>&1 | grep -v '^WARNING: Location' || true
  tar -C "$site" -cf - site | xz -T0 -9 >.carry/gputest/site.tar.xz
  rm -rf "$site" .carry/gputest/wheels
  cp -r "$("$root/.venv/bin/python" -c 'from cpt_assets.lib.base_model import default_tokenizer_dir; print(default_tokenizer_dir())')" \
    .carry/gputest/tokenizer
  du -sh .carry/gputest/*
  ;;
run)
  rm -rf /tmp/site && tar -xJf .carry/gputest/site.tar.xz -C /tmp
  mkdir -p ~/.cache/cpt_assets && cp -rn .carry/gputest/tokenizer ~/.cache/cpt_assets/smollm2-tokenizer-v2
  if [ ! -f /usr/share/games/fortunes/literature ]; then  # control_text's general English (apt's `fortunes`)
    mkdir -p /usr/share/games && cp -r .carry/fortunes /usr/share/games/fortunes
  fi
  export PYTHONPATH=/tmp/site:$PWD CPT_CORPUS=$PWD/.carry/corpus HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
  nvidia-smi -L
  python3 -m pytest -m gpu cpt_assets_tests/defs/test_gpu_smoke.py -p no:cacheprovider -o addopts="" -q -rA "${@:2}"
  ;;
*)
  echo "usage: $0 bundle|run" >&2
  exit 2
  ;;
esac
