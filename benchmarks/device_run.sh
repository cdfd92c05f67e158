#!/usr/bin/env bash
# The whole GPU session in one command, for the H200 the `device` tool lends (docs/benchmarks.md, "GPU").
#
# Here, once:   bash benchmarks/device_run.sh --prepare     # downloads the wheels the device image lacks into .whl/
# There:        run(command="bash benchmarks/device_run.sh", carry=[".whl"], timeout_s=540)
#
# On the device it installs the carried wheels, records the GPU, runs benchmarks/gpu.py (about 6 minutes,
# issue 19's per-UNet-call sampling configurations included, run before the 1000-step ones and compared with DDPMPipeline;
# host-sync check included) and, with the time left, the gpu-marked tests that need no dataset download.
# Everything it writes goes to $OUT, which comes back.
set -u
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--prepare" ]; then
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || grep -qx '/.whl/' .gitignore || echo /.whl/ >> .git/info/exclude
    # The device image has torch, transformers, huggingface_hub, accelerate and safetensors, not diffusers
    # (shared/DESIGN.md); diffusers is pure Python, so one wheel fits any Python 3.
    pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1
    # Pillow (diffusers and hf_ddpm.core.pipeline import PIL) is not on DESIGN.md's list of what the image has.
    pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 -d .whl "pillow>=10,<13"
    ls -l .whl
    exit 0
fi

: "${OUT:?run this on the device machine, where \$OUT is set}"
start=$(date +%s)
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv > "$OUT/nvidia-smi.csv" 2>&1
python -c "import torch, diffusers, accelerate; print(torch.__version__, diffusers.__version__, accelerate.__version__)" \
    > "$OUT/versions.txt" 2>&1 || { cat "$OUT/versions.txt"; exit 1; }

timeout 460 python benchmarks/gpu.py --json "$OUT/gpu.json" > "$OUT/gpu.log" 2>&1
echo "gpu.py exit $? after $(( $(date +%s) - start )) s" >> "$OUT/gpu.log"
tail -n 20 "$OUT/gpu.log"

# The pipeline's GPU tests need only torch and diffusers. The training-loop sync test needs datasets and
# scikit-learn, which the image lacks; gpu.py's host_syncs check runs the same calls without accelerate.
if [ $(( $(date +%s) - start )) -lt 470 ] && python -c "import pytest" 2>/dev/null; then
    timeout 60 python -m pytest -q -m gpu -p no:cacheprovider tests/core/test_pipeline.py \
        "tests/core/test_gpu_host_syncs.py::test_sampling_loop_does_not_sync" > "$OUT/pytest-gpu.log" 2>&1
    tail -n 5 "$OUT/pytest-gpu.log"
fi
