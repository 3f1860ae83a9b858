#!/usr/bin/env bash
# The device window's command, rehearsed on this CPU: a fresh Python 3.11 virtualenv holding
# only what a bare GPU machine ships, plus what gpu_carry.sh gathers, installed the same way;
# then `python -m benchmarks.gpu --device cpu --images 64` from the repository root.
#   bash benchmarks/gpu_check.sh [WORKDIR]        # default: a new folder under /tmp
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d /tmp/tagger-gpu-check.XXXXXX)}
mkdir -p "$work"
python3.11 -m venv "$work/venv"
pip=("$work/venv/bin/pip" install -q)
"${pip[@]}" --upgrade pip
# What the device ships (torchvision left out: PyPI's does not import beside this torch).
"${pip[@]}" torch==2.13.0
"${pip[@]}" "transformers>=5" onnxruntime numpy Pillow psutil pyarrow Jinja2 tqdm \
  prometheus-client PyYAML requests safetensors tokenizers huggingface-hub
PYTHON="$here/.venv/bin/python" bash "$here/benchmarks/gpu_carry.sh" "$work/carry" 3.11
"${pip[@]}" --no-index --no-deps --target "$work/site" "$work"/carry/wheels/*.whl
cd "$here"
PYTHONPATH="$work/site:$here" "$work/venv/bin/python" -m benchmarks.gpu --device cpu --images 64 \
  --json "$work/gpu.json"
echo "wrote $work/gpu.json ($(wc -c < "$work/gpu.json") bytes)"
