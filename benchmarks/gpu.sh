#!/usr/bin/env bash
# The GPU table in one command that keeps what it measured whatever happens (docs/gpu.md).
#
#   benchmarks/gpu.sh fetch-wheels            here, with network: fill benchmarks/wheels/ (gpu-wheels.txt)
#   benchmarks/gpu.sh --out "$OUT"            on the GPU machine; results and gpu.log in --out
#   benchmarks/gpu.sh --device cpu --quick    every cell kind at toy size on a CPU (the test suite runs it)
#   benchmarks/gpu.sh --out "$OUT" -- --cells fit:64:bf16:compiled   chosen cells (model_throughput.py options)
#
# Options: --deadline-s S (the whole run, installs included, ends within S seconds; default 360),
# --budget-s S (no model cell starts after S seconds of the run; default 240), --loader-s S (the
# loader benchmark's share at the end; default 45), --skip-loader, --deps-only (install what is
# missing, then stop), --require MOD[,MOD] (more modules that must import).
#
# Each part runs under `timeout -s INT -k`, timed so that even its SIGKILL comes before the deadline:
# SIGINT lets the model benchmark record the cell it was in and stop; a process that ignores it is
# killed 10 s later. The model benchmark rewrites its JSON after every cell, so a part cut short
# keeps the cells it finished.
#
# The GPU machine has no network and may lack some of our dependencies: modules that do not import
# are installed from the wheels in benchmarks/wheels/ (or $WHEELS) with `pip install --no-index
# --no-deps --target`, only wheels of distributions not installed there, so nothing the machine has
# is shadowed. `fetch-wheels` downloads them here for Python 3.12 manylinux x86_64 (the GPU image's).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PYTHON="${PYTHON:-python3}"
WHEELS="${WHEELS:-$HERE/wheels}"
SITE="${SITE:-/tmp/lightning-frozen-site}"

DEVICE=cuda
QUICK=()
DEADLINE=360
BUDGET=240
LOADER_S=45
OUT_DIR="$HERE/results"
SKIP_LOADER=0
DEPS_ONLY=0
EXTRA_REQUIRE=""
MODEL_ARGS=()

fetch_wheels() {
    mkdir -p "$WHEELS"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux2010_x86_64 --platform manylinux1_x86_64 \
        -d "$WHEELS" -r "$HERE/gpu-wheels.txt"
    echo "wheels in $WHEELS:"; ls -1 "$WHEELS"
    du -ch "$WHEELS"/*.whl | tail -1
}

if [[ "${1:-}" == "fetch-wheels" ]]; then
    fetch_wheels
    exit 0
fi

while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --quick) QUICK=(--quick); shift ;;
        --deadline-s) DEADLINE="$2"; shift 2 ;;
        --budget-s) BUDGET="$2"; shift 2 ;;
        --loader-s) LOADER_S="$2"; shift 2 ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --skip-loader) SKIP_LOADER=1; shift ;;
        --deps-only) DEPS_ONLY=1; shift ;;
        --require) EXTRA_REQUIRE="$2"; shift 2 ;;
        --) shift; MODEL_ARGS=("$@"); break ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
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

left() {  # seconds left before the deadline
    echo $((DEADLINE - SECONDS))
}

at_least() {  # at_least MIN VALUE
    echo $(($2 > $1 ? $2 : $1))
}

mkdir -p "$OUT_DIR"
[[ $DEPS_ONLY -eq 0 ]] && exec > >(tee -a "$OUT_DIR/gpu.log") 2>&1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

ensure "the model benchmark" torch timm transformers || exit 1
# `lightning-frozen fit` (the fit cells): without these those cells fail on their own, the rest runs
ensure "the fit cells" pytorch_lightning jsonargparse docstring_parser typeshed_client av kornia torchdata \
    || echo "gpu.sh: the fit cells will fail"
LOADER_OK=0
if [[ $SKIP_LOADER -eq 0 ]] && ensure "the loader benchmark" av kornia numpy; then LOADER_OK=1; fi
if [[ -n "$EXTRA_REQUIRE" ]]; then ensure "--require" ${EXTRA_REQUIRE//,/ } || exit 1; fi
if [[ $DEPS_ONLY -eq 1 ]]; then echo "gpu.sh: dependencies ready (PYTHONPATH=$PYTHONPATH)"; exit 0; fi

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    "$PYTHON" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__,
'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} | tee "$OUT_DIR/environment.txt"

PLAN=(--plan gpu)
for arg in "${MODEL_ARGS[@]}"; do [[ "$arg" == "--cells" || "$arg" == "--plan" ]] && PLAN=(); done
# SIGINT at the limit, SIGKILL 10 s later: by the deadline less the loader's share, which it keeps only
# when that leaves the model cells twice as much (`timeout 0` would mean no limit)
RESERVE=$((LOADER_OK && $(left) >= 3 * LOADER_S ? LOADER_S : 0))
MODEL_LIMIT=$(at_least 1 $(($(left) - 10 - RESERVE)))
MODEL_BUDGET=$(at_least 0 $((BUDGET - SECONDS)))
echo "gpu.sh: model cells start within $MODEL_BUDGET s and stop within $MODEL_LIMIT s"
timeout -s INT -k 10 "$MODEL_LIMIT" \
    "$PYTHON" "$HERE/model_throughput.py" --device "$DEVICE" "${PLAN[@]}" --budget-s "$MODEL_BUDGET" \
    "${QUICK[@]}" --json "$OUT_DIR/model_throughput_gpu.json" "${MODEL_ARGS[@]}" \
    || echo "gpu.sh: the model run stopped early (exit $?); the cells it finished are in its JSON"

if [[ $LOADER_OK -eq 1 && $(left) -ge 20 ]]; then
    LOADER_ARGS=(--videos 2 --clips 8 --rounds 1 --workers 14)
    [[ ${#QUICK[@]} -gt 0 ]] && LOADER_ARGS=(--videos 1 --clips 2 --rounds 1 --workers 2)
    timeout -s INT -k 5 "$(($(left) - 5))" \
        "$PYTHON" "$HERE/loader_throughput.py" "${LOADER_ARGS[@]}" --out "$OUT_DIR/loader_throughput.json" \
        || echo "gpu.sh: the loader benchmark stopped early (exit $?)"
else
    echo "gpu.sh: loader benchmark skipped"
fi
echo "gpu.sh: results in $OUT_DIR ($SECONDS s)"
