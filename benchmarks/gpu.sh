#!/usr/bin/env bash
# The GPU table: benchmarks/model_throughput.py --plan gpu (most important cells first, JSON
# rewritten after every cell, no new cell once the budget is spent), then the loader benchmark.
#
#   benchmarks/gpu.sh --out "$OUT"           on the GPU machine (results in $OUT, default benchmarks/results)
#   benchmarks/gpu.sh --device cpu --quick   the same logic on a CPU: tiny model, a few seconds per cell
#   benchmarks/gpu.sh fetch-wheels           here, with network: fill benchmarks/wheels/ (see below)
#
# Options: --budget-s S (model cells start only within S seconds, and the model run is stopped
# at S + 150 s; default 360, so that the whole script fits a 10-minute slot), --skip-loader,
# --deps-only (install what is missing, then stop), --require MOD[,MOD] (more modules that must import).
#
# A GPU machine without network may lack our dependencies. Modules that do not import are
# installed from the wheels in benchmarks/wheels/ (or $WHEELS) with `pip install --no-index
# --no-deps --target`, and only wheels of distributions not installed there, so nothing the machine
# has is shadowed. `fetch-wheels` downloads them here for Python 3.12 manylinux x86_64 (the
# GPU image's) from the pinned list benchmarks/gpu-wheels.txt.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-$HERE/wheels}"
SITE="${SITE:-/tmp/lightning-frozen-site}"

DEVICE=cuda
QUICK=()
BUDGET=360
OUT_DIR="$HERE/results"
SKIP_LOADER=0
DEPS_ONLY=0
EXTRA_REQUIRE=""

fetch_wheels() {
    mkdir -p "$WHEELS"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux2010_x86_64 --platform manylinux1_x86_64 \
        -d "$WHEELS" -r "$HERE/gpu-wheels.txt"
    echo "wheels in $WHEELS:"; ls -1 "$WHEELS"
}

if [[ "${1:-}" == "fetch-wheels" ]]; then
    fetch_wheels
    exit 0
fi

while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --quick) QUICK=(--quick); shift ;;
        --budget-s) BUDGET="$2"; shift 2 ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --skip-loader) SKIP_LOADER=1; shift ;;
        --deps-only) DEPS_ONLY=1; shift ;;
        --require) EXTRA_REQUIRE="$2"; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "gpu.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done

missing_modules() {  # the modules among "$@" that do not import
    "$PYTHON" - "$@" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}

install_missing_wheels() {  # wheels of distributions that are not installed, into $SITE
    "$PYTHON" - "$WHEELS" <<'EOF'
import importlib.metadata as md, pathlib, re, sys
installed = {re.sub(r"[-_.]+", "_", d.metadata["Name"]).lower() for d in md.distributions()}
for wheel in sorted(pathlib.Path(sys.argv[1]).glob("*.whl")):
    if wheel.name.split("-")[0].lower() not in installed:
        print(wheel)
EOF
}

ensure() {  # ensure LABEL MODULE...: 0 when all import (after installing wheels if needed)
    local label="$1"; shift
    local missing
    missing="$(missing_modules "$@")"
    [[ -z "$missing" ]] && return 0
    echo "gpu.sh: $label needs modules that do not import: $missing"
    if compgen -G "$WHEELS/*.whl" > /dev/null; then
        local wheels
        mapfile -t wheels < <(install_missing_wheels)
        if [[ ${#wheels[@]} -gt 0 ]]; then
            echo "gpu.sh: installing ${#wheels[@]} wheel(s) from $WHEELS into $SITE"
            "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$SITE" "${wheels[@]}"
        fi
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
        missing="$(missing_modules "$@")"
        [[ -z "$missing" ]] && return 0
    fi
    echo "gpu.sh: still missing for $label: $missing. Fix: on a machine with network run" \
         "'benchmarks/gpu.sh fetch-wheels' and bring benchmarks/wheels/ along." >&2
    return 1
}

mkdir -p "$OUT_DIR"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

ensure "the model benchmark" torch timm transformers || exit 1
LOADER_OK=0
if [[ $SKIP_LOADER -eq 0 ]] && ensure "the loader benchmark" av decord kornia numpy; then LOADER_OK=1; fi
if [[ -n "$EXTRA_REQUIRE" ]]; then ensure "--require" ${EXTRA_REQUIRE//,/ } || exit 1; fi
if [[ $DEPS_ONLY -eq 1 ]]; then echo "gpu.sh: dependencies ready (PYTHONPATH=$PYTHONPATH)"; exit 0; fi

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PYTHON" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} | tee "$OUT_DIR/environment.txt"

# The JSON is rewritten after every cell: stopping a cell that overruns loses only that cell.
timeout --signal=INT "$((${BUDGET%.*} + 150))" \
    "$PYTHON" "$HERE/model_throughput.py" --device "$DEVICE" --plan gpu --budget-s "$BUDGET" "${QUICK[@]}" \
    --json "$OUT_DIR/model_throughput_gpu.json" || echo "gpu.sh: the model run stopped early (exit $?)"

if [[ $LOADER_OK -eq 1 ]]; then
    LOADER_ARGS=(--videos 4 --clips 8 --rounds 1 --workers 14)
    [[ ${#QUICK[@]} -gt 0 ]] && LOADER_ARGS=(--videos 1 --clips 2 --rounds 1 --workers 2)
    "$PYTHON" "$HERE/loader_throughput.py" "${LOADER_ARGS[@]}" --out "$OUT_DIR/loader_throughput.json"
else
    echo "gpu.sh: loader benchmark skipped"
fi
echo "gpu.sh: results in $OUT_DIR"
