#!/usr/bin/env bash
# On a CUDA machine with no registry, from the repository root: stage one carried bundle part, or (`run`) unpack the
# staged parts, install with the README's setup script from them and run the main job from an empty lake and
# instance, then print each stage's time and the model figures (scripts/run_report.py).
#   bash scripts/device_main.sh stage      # each call carrying .carry/bundle/part-NN (and .carry/corpus once)
#   bash scripts/device_main.sh run        # the last call
set -euo pipefail
cd "$(dirname "$0")/.."
stage=${CPT_STAGE:-/root/cpt-stage}
mkdir -p "$stage"
cp -n .carry/bundle/part-* "$stage/" 2>/dev/null || true
[ -d .carry/corpus ] && cp -rn .carry/corpus "$stage/" || true
if [ -d .carry/fortunes ] && [ ! -f /usr/share/games/fortunes/literature ]; then
  mkdir -p /usr/share/games && cp -r .carry/fortunes /usr/share/games/fortunes  # what apt's `fortunes` would install
fi
ls -l "$stage"
[ "${1:-stage}" = run ] || exit 0
if [ ! -f "$stage/wheels/.unpacked" ]; then
  mkdir -p "$stage/wheels"
  cat "$stage"/part-* | gunzip | tar -xf - -C "$stage/wheels"
  mkdir -p "$stage/llama.cpp" && tar -xf "$stage/wheels/llama-tools.tar" -C "$stage/llama.cpp"
  touch "$stage/wheels/.unpacked"
fi
export CPT_WHEELS="$stage/wheels" CPT_MIRROR="$stage/corpus" CPT_LLAMA_CPP_CACHE="$stage/llama.cpp"
export CPT_BUILD_JOBS=$(nproc)
start=$(date +%s)
bash scripts/setup.sh
echo "install: $(( $(date +%s) - start )) s"
rm -rf .dagster_home && find data_lake -mindepth 1 -not -name README.md -delete
start=$(date +%s)
bash scripts/main.sh "${@:2}"
echo "main job: $(( $(date +%s) - start )) s"
DAGSTER_HOME=$PWD/.dagster_home .venv/bin/python scripts/run_report.py | tee "${OUT:-/tmp}/run_report.md"
