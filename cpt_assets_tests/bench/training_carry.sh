#!/usr/bin/env bash
# Builds .carry/ (ignored by git) for bench_training_gpu.py on the device machine, whose image has torch,
# transformers, peft and accelerate but not what this lists. Everything must stay under the 64 MiB a call carries,
# so the wheels are unpacked, not installed, and trimmed: bitsandbytes keeps only its CUDA 13.0 library (the image's
# torch is cu130), unsloth loses its "studio" web app, torchao its optional C++ extensions.
# datasets stays < 5 for unsloth, and >= 4.8 so its formatters survive torchvision 0.26 (no VideoReader).
# Run from the repository root with the project's .venv: bash cpt_assets_tests/bench/training_carry.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
wheels=.whl
site=.carry/site
mkdir -p "$wheels" .carry
platforms=()
for n in 2_17 2_24 2_27 2_28 2_31 2_34 2_35; do platforms+=(--platform "manylinux_${n}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 -d "$wheels" \
  bitsandbytes==0.50.2 liger-kernel==0.8.5 unsloth==2026.10.9 unsloth_zoo==2026.10.9 trl==1.15.0 datasets==4.8.5 \
  dill==0.4.0 multiprocess==0.70.18 msgspec==0.22.0 cut_cross_entropy==25.1.1 tyro==1.0.17 docstring-parser==0.18.0 \
  typeguard==4.6.0 shtab==1.13.0 nest-asyncio==1.6.0 json5==0.17.3 structlog==26.1.0 torchao==0.18.0

rm -rf "$site"
mkdir -p "$site"
for wheel in "$wheels"/*.whl; do
  case "$wheel" in
    *bitsandbytes-*) unzip -q -o "$wheel" -d "$site" -x 'bitsandbytes/libbitsandbytes_cuda1[12]*' \
      'bitsandbytes/libbitsandbytes_cuda132*' 'bitsandbytes/libbitsandbytes_rocm*' 'bitsandbytes/libbitsandbytes_xpu*' ;;
    *unsloth-2026*) unzip -q -o "$wheel" -d "$site" -x 'studio/*' 'unsloth_cli/*' ;;
    *datasets-4.3*) ;;
    *) unzip -q -o "$wheel" -d "$site" ;;
  esac
done
rm -rf "$site"/test "$site"/torchao/_C*.so "$site"/dill-*.data
find "$site" -name __pycache__ -prune -exec rm -rf {} +

# SmolLM2-135M-Instruct's config.json and tokenizer, read from the packaged GGUF (the weights stay behind).
.venv/bin/python - <<'EOF'
from pathlib import Path

from transformers import AutoConfig

from cpt_assets.lib.base_model import default_tokenizer_dir, load_tokenizer, smollm2_gguf_path

gguf = smollm2_gguf_path()
config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
if hasattr(config, "quantization_config"):
    del config.quantization_config
out = Path(".carry/smollm2")
out.mkdir(parents=True, exist_ok=True)
config.save_pretrained(out)
load_tokenizer(default_tokenizer_dir()).save_pretrained(out)
EOF

# The corpus PDFs' text, one string per document; every tenth document (from the fourth) is validation.
mkdir -p .carry/corpus
CPT_CORPUS=${CPT_CORPUS:-../shared/corpus} .venv/bin/python - <<'EOF'
import csv
import gzip
import json
import os
from pathlib import Path

import pymupdf

root = Path(os.environ["CPT_CORPUS"])
docs = []
for row in csv.DictReader(open(root / "MANIFEST.tsv"), delimiter="\t"):
    try:
        with pymupdf.open(root / row["folder"] / row["file"]) as pdf:
            docs.append("\n".join(page.get_text() for page in pdf))
    except Exception:  # the corpus holds deliberately broken and encrypted PDFs
        continue
docs = [d for d in docs if d.strip()]
split = {"train": [d for i, d in enumerate(docs) if i % 10 != 3], "validation": [d for i, d in enumerate(docs) if i % 10 == 3]}
with gzip.open(".carry/corpus/texts.json.gz", "wt") as handle:
    json.dump(split, handle)
EOF
du -sh .carry
