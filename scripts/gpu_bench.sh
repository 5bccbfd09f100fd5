#!/usr/bin/env bash
# The GPU benchmark in one command, on a bare offline CUDA machine with a fresh checkout (scripts/gpu_bench.py
# says what it measures). Such machines have Python 3.12, torch, timm, h5py, tifffile, pandas and scikit-image,
# but not MONAI, Ignite, cuCIM, imagecodecs or OpenCV: those come as wheels from .cache/gpu_bench/wheels, installed with
# --no-deps into .cache/gpu_bench/site (never the machine's torch, never the network), next to the sample slide.
#
#   scripts/gpu_bench.sh --fetch [--cuda 12|13] [--python 3.12]
#                               on a networked machine: the wheels (pins of constraints.txt, cuCIM for the GPU
#                               machine's CUDA major, default 13, and Python, default 3.12) and the sample slide
#                               into .cache/gpu_bench (106 MB, 60 of them OpenCV: more than the device tool's
#                               64 MiB carry, so bring it along as untracked files of the checkout)
#   scripts/gpu_bench.sh [--json F] [--tiny]    set up what is missing, then run scripts/gpu_bench.py
#   scripts/gpu_bench.sh --dry-run              say what would be installed, and stop
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${GPU_BENCH_CACHE:-$ROOT/.cache/gpu_bench}
PYTHON=${PYTHON:-python3}
# module -> distribution, for what the benchmark imports beyond the bare machine's packages
MODULES=(monai:monai ignite:pytorch-ignite cucim:cucim imagecodecs:imagecodecs cv2:opencv-python-headless)

pin() { grep -i "^$1==" "$ROOT/constraints.txt" | cut -d= -f3; }

if [[ ${1:-} == --fetch ]]; then
    cuda=13 python=3.12
    shift
    while (($#)); do
        case $1 in
            --cuda) cuda=${2:?--cuda needs 12 or 13} ;;
            --python) python=${2:?--python needs a version such as 3.12} ;;
            *) echo "gpu_bench: unknown --fetch option $1 (--cuda 12|13, --python X.Y)" >&2 && exit 2 ;;
        esac
        shift 2
    done
    mkdir -p "$CACHE/wheels"
    "$PYTHON" -m pip download --no-deps --only-binary=:all: --python-version "$python" \
        --platform manylinux_2_28_x86_64 --dest "$CACHE/wheels" \
        "monai==$(pin monai)" "pytorch-ignite==$(pin pytorch-ignite)" "imagecodecs==$(pin imagecodecs)" \
        "cucim-cu$cuda==$(pin cucim-cu13)" "opencv-python-headless==$(pin opencv-python-headless)"
    PYTHONPATH=$ROOT "$PYTHON" -c "from pathme.demo.sample_data import fetch_sample_slide; fetch_sample_slide('$CACHE')"
    du -sh "$CACHE"
    exit 0
fi

# the distributions whose module this python cannot find (already installed ones are left alone)
read -r -a missing <<<"$(PYTHONPATH=$CACHE/site "$PYTHON" -c '
import importlib.util, sys
print(" ".join(entry.split(":")[1] for entry in sys.argv[1:] if importlib.util.find_spec(entry.split(":")[0]) is None))
' "${MODULES[@]}")"
if [[ ${1:-} == --dry-run ]]; then
    echo "python: $("$PYTHON" -c 'import sys; print(sys.version.split()[0])')"
    echo "to install from $CACHE/wheels: ${missing[*]:-nothing}"
    exit 0
fi
if ((${#missing[@]})); then
    wheels=()
    for distribution in "${missing[@]}"; do
        found=$(find "$CACHE/wheels" -name "${distribution//-/_}*.whl" 2>/dev/null | head -n 1 || true)
        if [[ -z $found ]]; then
            echo "gpu_bench: $distribution is not installed and no wheel of it is in $CACHE/wheels;" \
                "run scripts/gpu_bench.sh --fetch on a networked machine and bring .cache/gpu_bench along" >&2
            exit 2
        fi
        wheels+=("$found")
    done
    "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$CACHE/site" "${wheels[@]}"
fi
export PYTHONPATH=$ROOT:$ROOT/scripts:$CACHE/site${PYTHONPATH:+:$PYTHONPATH}
exec "$PYTHON" "$ROOT/scripts/gpu_bench.py" --sample-dir "$CACHE" "$@"
