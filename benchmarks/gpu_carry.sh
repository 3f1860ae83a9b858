#!/usr/bin/env bash
# What a bare GPU machine lacks for `python -m benchmarks.gpu` (see benchmarks/gpu/__init__.py),
# gathered here into DIR, 60 MiB at most:
#   bash benchmarks/gpu_carry.sh DIR [PYTHON_VERSION]     # default 3.12: the device's python
# DIR/wheels/  every wheel the worker and the producer import beyond what the machine ships
#              (torch, torchvision, transformers, onnxruntime, numpy, Pillow, psutil, pyarrow,
#              Jinja2, tqdm, prometheus-client, PyYAML, requests, safetensors, tokenizers,
#              huggingface-hub and their own dependencies); onnx/onnxscript (ONNX export) and
#              flower are left out: the benchmark runs the torch backend.
# DIR/photos/  three dozen real photos, 1,200 px JPEGs (../shared/scripts/make-corpus)
# DIR/debs/    redis-server's Debian packages (1.4 MiB). PostgreSQL's do not fit: postgresql-15
#              is 16 MiB and libicu72 9 MiB more, over 60 MiB beside the wheels (~43 MiB);
#              initdb also refuses to run as root. The benchmark writes results to SQLite.
set -euo pipefail
dir=${1:?usage: gpu_carry.sh DIR [PYTHON_VERSION]}
version=${2:-3.12}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
[ -x "$python" ] || python=python3
mkdir -p "$dir/wheels" "$dir/photos" "$dir/debs"
dir=$(cd "$dir" && pwd)

# Top-level needs (pyproject's dependencies, less the shipped ones); pip resolves the rest.
needs=("celery[redis]>=5.4" "redis>=5" "sqlalchemy>=2.0.30" "psycopg2-binary>=2.9"
       "alembic>=1.13" "obstore>=0.12" "boto3>=1.34" "pglast>=7" "click>=8.1"
       "platformdirs>=4.2" "python-json-logger>=3.1")
# Shipped on the machine (or pulled in there by what is): never carried.
shipped='^(torch|torchvision|transformers|onnxruntime|numpy|pillow|psutil|pyarrow|jinja2|markupsafe|tqdm|prometheus_client|pyyaml|requests|urllib3|idna|certifi|charset_normalizer|safetensors|tokenizers|huggingface_hub|hf_xet|filelock|fsspec|packaging|typing_extensions|regex|sympy|mpmath|networkx|nvidia_.*|triton|setuptools)_[0-9]'
platforms=()
for p in manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux_2_27_x86_64 manylinux_2_28_x86_64 \
         manylinux_2_31_x86_64 manylinux_2_34_x86_64 linux_x86_64; do
  platforms+=(--platform "$p")
done
rm -f "$dir"/wheels/*.whl
# The versions tested here (this checkout's virtualenv, `make setup`), where it has one.
constraints=$(mktemp)
if [ -x "$here/.venv/bin/python" ]; then
  "$here/.venv/bin/python" -m pip freeze --exclude-editable 2>/dev/null | grep '==' > "$constraints" || true
fi
"$python" -m pip download -q --only-binary=:all: --python-version "$version" --implementation cp \
  "${platforms[@]}" -c "$constraints" -d "$dir/wheels" "${needs[@]}"
rm -f "$constraints"
for wheel in "$dir"/wheels/*.whl; do
  name=$(basename "$wheel" | tr 'A-Z-' 'a-z_')
  if [[ $name =~ $shipped ]]; then rm -f "$wheel"; fi
done

# Real photos: a few dozen of the wallpaper packages' photos, as catalogue JPEGs.
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
if ! "$python" -c "import PIL" 2>/dev/null; then  # make-corpus re-encodes them with Pillow
  "$python" -m pip install -q --target "$corpus/pil" Pillow
  export PYTHONPATH="$corpus/pil${PYTHONPATH:+:$PYTHONPATH}"
fi
"$here/../shared/scripts/make-corpus" "$corpus/photos" "$python" >/dev/null
rm -f "$dir"/photos/*
find "$corpus/photos/catalog" -name '*.jpg' | sort | head -36 | xargs -I{} cp {} "$dir/photos/"

# redis-server and the libraries the bare machine may lack (run from its folder, dpkg -x).
rm -f "$dir"/debs/*.deb
(cd "$dir/debs" && { apt-get download redis-server redis-tools liblzf1 libjemalloc2 >/dev/null 2>&1 \
  || { apt-get update >/dev/null && apt-get download redis-server redis-tools liblzf1 libjemalloc2 >/dev/null; }; })

size=$(du -sm "$dir" | cut -f1)
echo "$dir: $(ls "$dir/wheels" | wc -l) wheels, $(ls "$dir/photos" | wc -l) photos, $(ls "$dir/debs" | wc -l) Debian packages; ${size} MiB"
if [ "$size" -gt 60 ]; then echo "over the 60 MiB carry limit" >&2; exit 1; fi
