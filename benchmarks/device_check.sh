#!/usr/bin/env bash
# One prepared check for a fresh accelerator machine (issue 14.4), within a time budget (default
# 8 minutes): the environment and JAX's devices, JAX with CUDA only if missing, the project
# installed, the test suite with a time limit, then the seed, 64-variant (fused and plain
# jax.vmap) and study benchmarks as JSON records. Everything lands in $OUT (else
# runs/device_out/), at most 8 files, the device tool's limit:
#   device_check.log   every step's command, output and exit status, with timestamps
#   env.json           machine, GPU, Python, package versions, JAX backend and devices
#   tests.txt          pytest's output (-v: one line per test, so a cut-off run says where)
#   junit.xml          pytest's results, when it finished within its limit
#   results.jsonl      every benchmark's JSON records (benchmarks/README.md describes them)
#   summary.json       each step's status and seconds, the targets, the main figures
#
#   bash benchmarks/device_check.sh                      # on the accelerator machine
#   JAX_PLATFORMS=cpu DEVICE_CHECK_QUICK=1 bash benchmarks/device_check.sh   # a smoke run here
#
# Settings (environment variables):
#   DEVICE_CHECK_BUDGET   total seconds (default 480); each step's limit is cut to what is left
#   DEVICE_CHECK_PYTHON   the interpreter (default python3: on nvidia-h200 the image's Python
#                         3.12 that holds JAX with CUDA)
#   DEVICE_CHECK_INSTALL  1 (default) installs the project; 0 uses it as already installed
#   DEVICE_CHECK_TESTS    what pytest runs (default: tests, without tests/test_benchmarks.py,
#                         whose scripts run below anyway); "none" skips the tests
#   DEVICE_CHECK_TEST_S   the test suite's limit in seconds (default 150)
#   DEVICE_CHECK_WORKERS  pytest-xdist workers when xdist is installed (default 8; 0: serial)
#   DEVICE_CHECK_DATA     auto (default: the real data if TFDS_DATA_DIR holds it, else
#                         synthetic IMDb-shaped rows), real, or synthetic
#   DEVICE_CHECK_QUICK    1: small slices and few repeats (for trying the script out)
#
# Offline: the machine reaches no package index. Wheels carried in the repository's .whl/
# folder (see /work/.library/device/README.md) are installed from there, and nothing else is
# fetched; a dependency missing there is reported, and the project is then installed without
# its dependencies so that what can run still runs.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)
OUT_DIR=${OUT:-$REPO/runs/device_out}
BUDGET=${DEVICE_CHECK_BUDGET:-480}
PY=${DEVICE_CHECK_PYTHON:-python3}
INSTALL=${DEVICE_CHECK_INSTALL:-1}
TESTS=${DEVICE_CHECK_TESTS:-tests}
TEST_S=${DEVICE_CHECK_TEST_S:-150}
WORKERS=${DEVICE_CHECK_WORKERS:-8}
DATA=${DEVICE_CHECK_DATA:-auto}
QUICK=${DEVICE_CHECK_QUICK:-0}
RESERVE=15 # seconds kept back for the summary

mkdir -p "$OUT_DIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/device-check-XXXXXX")
LOG=$OUT_DIR/device_check.log
RESULTS=$OUT_DIR/results.jsonl
STEPS=$WORK/steps.jsonl
: >"$LOG"
: >"$RESULTS"
: >"$STEPS"
START=$(date +%s)

# Several processes share one GPU here (pytest workers, a benchmark beside the commands it
# starts): no process takes 75% of its memory up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export IMDB_JAX_CACHE_DIR=${IMDB_JAX_CACHE_DIR:-$WORK/imdb-cache}

elapsed() { echo $(($(date +%s) - START)); }
left() { echo $((BUDGET - $(elapsed) - RESERVE)); }
log() { echo "[device_check +$(elapsed)s] $*" | tee -a "$LOG" >&2; }

# step NAME CAP_SECONDS COMMAND...: runs COMMAND with a limit of min(CAP, time left), its
# stdout and stderr into the log (JSON records of benchmarks are split off by `bench`), and
# records the step's status. Returns the command's status (124: its limit ran out).
step() {
	local name=$1 cap=$2
	shift 2
	local limit
	limit=$(left)
	if ((limit > cap)); then limit=$cap; fi
	if ((limit < 10)); then
		log "$name: skipped, ${limit}s left of the budget"
		echo "{\"step\": \"$name\", \"status\": \"skipped\", \"seconds\": 0, \"limit_s\": $limit}" >>"$STEPS"
		return 125
	fi
	log "$name: $* (limit ${limit}s)"
	local began status
	began=$(date +%s)
	timeout -k 10 "$limit" "$@" >>"$LOG" 2>&1
	status=$?
	local took=$(($(date +%s) - began))
	local word=ok
	if ((status == 124 || status == 137)); then word=timeout; elif ((status != 0)); then word=failed; fi
	log "$name: $word (exit $status) in ${took}s"
	echo "{\"step\": \"$name\", \"status\": \"$word\", \"exit\": $status, \"seconds\": $took, \"limit_s\": $limit}" >>"$STEPS"
	return $status
}

# bench NAME CAP SCRIPT ARGS...: a benchmark script; its JSON lines (stdout) go to results.jsonl,
# also those it printed before a limit cut it off.
bench() {
	local name=$1 cap=$2 script=$3
	shift 3
	step "$name" "$cap" bash -c 'out=$1; shift; "$@" >"$out"' _ "$WORK/$name.jsonl" "$PY" "benchmarks/$script" "$@"
	local status=$?
	if [[ -f $WORK/$name.jsonl ]]; then grep '^{' "$WORK/$name.jsonl" >>"$RESULTS"; fi
	return $status
}

log "repository $REPO, output $OUT_DIR, budget ${BUDGET}s, python $PY"

# --- 1. The machine and JAX --------------------------------------------------------------------
{
	command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
	nproc
	free -g | head -2
} >>"$LOG" 2>&1

has_gpu=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1 && [[ ${JAX_PLATFORMS:-} != cpu ]]; then has_gpu=1; fi

jax_backend() {
	"$PY" -c 'import jax; print(jax.default_backend())' 2>>"$LOG" | tail -1
}
backend=$(jax_backend)
log "JAX backend: ${backend:-none (jax does not import)}; NVIDIA GPU present: $has_gpu"
if ((has_gpu)) && [[ $backend != gpu && $backend != cuda ]]; then
	# Only when JAX with CUDA is missing: from carried wheels, else from the index if one answers.
	if compgen -G ".whl/*.whl" >/dev/null; then
		step install_jax_cuda 120 "$PY" -m pip install -q --no-index --find-links .whl "jax[cuda12]"
	else
		step install_jax_cuda 120 "$PY" -m pip install -q --retries 0 --timeout 15 "jax[cuda12]"
	fi
	backend=$(jax_backend)
	log "JAX backend after installing: ${backend:-none}"
fi

# --- 2. The project -----------------------------------------------------------------------------
if [[ $INSTALL == 1 ]]; then
	wheels=(--no-index)
	if compgen -G ".whl/*.whl" >/dev/null; then wheels+=(--find-links .whl); fi
	if ! step install_project 120 "$PY" -m pip install -q "${wheels[@]}" --no-build-isolation -e ".[test]"; then
		log "install_project: the test extra's dependencies are not all here; installing the project alone"
		step install_project_no_deps 60 "$PY" -m pip install -q --no-index --no-build-isolation --no-deps -e .
	fi
fi
"$PY" - >"$OUT_DIR/env.json" 2>>"$LOG" <<'EOF'
import importlib.metadata, json, os, platform, subprocess
def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
# The project, its dependencies and its test extra (pyproject.toml), then what helps if present.
needed = ["imdb_jax", "jax", "jaxlib", "flax", "optax", "numpy", "scipy", "tensorflow-datasets", "array_record",
          "matplotlib", "tqdm", "pytest", "ruff", "pyright", "scikit-learn", "tensorboardX", "nbclient", "nbformat",
          "ipykernel"]
optional = ["jax-cuda12-plugin", "jax-cuda13-plugin", "numba", "pytest-xdist", "pytest-timeout"]
env = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
       "versions": {name: version(name) for name in needed + optional}}
env["missing"] = [name for name in needed if env["versions"][name] is None]
try:
    env["gpu"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout.strip()
except (OSError, subprocess.SubprocessError):
    env["gpu"] = None
try:
    import jax
    import numpy as np
    env["jax_backend"] = jax.default_backend()
    env["jax_devices"] = [str(device) for device in jax.devices()]
    # One matmul on the default device, checked against NumPy: the device computes.
    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    with jax.default_matmul_precision("float32"):
        env["matmul_max_rel_error"] = float(np.max(np.abs(np.asarray(jax.numpy.asarray(a) @ a) - a @ a)) / np.max(np.abs(a @ a)))
except Exception as error:  # the check goes on and says so
    env["jax_error"] = repr(error)
print(json.dumps(env, indent=1))
EOF
log "environment: $(tr -d '\n' <"$OUT_DIR/env.json" | head -c 600)"

# --- 3. The data ----------------------------------------------------------------------------------
data_args=()
case $DATA in
real) ;;
synthetic) data_args=(--synthetic) ;;
*)
	if "$PY" -c 'from imdb_jax.data.sources import default_tfds_data_dir, resolve_source; resolve_source(default_tfds_data_dir(), source="tfds")' >>"$LOG" 2>&1; then
		DATA=real
	else
		DATA=synthetic
		data_args=(--synthetic)
	fi
	;;
esac
log "data: $DATA"
quick_args=()
if [[ $QUICK == 1 ]]; then quick_args=(--quick --rows 1024); fi

# --- 4. The test suite ----------------------------------------------------------------------------
if [[ $TESTS != none ]]; then
	test_args=(-v -p no:cacheprovider --junitxml "$WORK/junit.xml")
	if [[ $TESTS == tests ]]; then test_args+=(--ignore tests/test_benchmarks.py); fi
	if "$PY" -c 'import xdist' 2>/dev/null && ((WORKERS > 0)); then test_args+=(-n "$WORKERS" --dist loadfile); fi
	if "$PY" -c 'import pytest_timeout' 2>/dev/null; then test_args+=(--timeout 120); fi
	# shellcheck disable=SC2086  # TESTS may name several paths
	step tests "$TEST_S" bash -c '"$0" -m pytest "${@:2}" >"$1" 2>&1' "$PY" "$OUT_DIR/tests.txt" "${test_args[@]}" $TESTS
	tail -n 3 "$OUT_DIR/tests.txt" | tee -a "$LOG" >&2
	if [[ -f $WORK/junit.xml ]]; then cp "$WORK/junit.xml" "$OUT_DIR/junit.xml"; fi
fi

# --- 5. The benchmarks ----------------------------------------------------------------------------
common=(--no-baselines --no-table "${data_args[@]}" "${quick_args[@]}")
bench roofline 45 roofline.py --machine-only "${common[@]}"
bench single 75 bench_single.py --first-layer sparse,dense,auto --fit-repeats 1 --repeats 5 "${common[@]}"
if [[ $QUICK == 1 ]]; then variants=1,4; else variants=1,64; fi
bench variants 80 bench_variants.py --variants "$variants" --no-mixed --repeats 3 "${common[@]}"
bench study 150 bench_study.py --commands train,study --repeats 1 --budget 120 "${common[@]}"
bench vmap 80 vmap_baseline.py --variants "${variants##*,}" --repeats 2 "${common[@]}"

# --- 6. The summary -------------------------------------------------------------------------------
"$PY" benchmarks/device_summary.py --steps "$STEPS" --results "$RESULTS" --env "$OUT_DIR/env.json" \
	--junit "$WORK/junit.xml" --data "$DATA" --budget "$BUDGET" --elapsed "$(elapsed)" >"$OUT_DIR/summary.json" 2>>"$LOG"
log "summary: $OUT_DIR/summary.json"
"$PY" -c 'import json, sys; s = json.load(open(sys.argv[1])); [print(line) for line in s["lines"]]' "$OUT_DIR/summary.json" | tee -a "$LOG" >&2
rm -rf "$WORK"
log "done in $(elapsed)s"
