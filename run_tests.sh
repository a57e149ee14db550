#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend (a backend is chosen at import time, so each
# needs its own process). Extra arguments go to pytest, e.g. ./run_tests.sh -m "not slow".
# Tests marked `once` (their result does not depend on the backend) run in one lane only: PyTorch's,
# or the one their marker names (tests/conftest.py).
#
# The suites spend much of their time tracing and compiling on one core (TensorFlow's used 1.1
# cores on average on a 2-core machine), so with 2 or more cores the three run at once, one lane
# each, and share the cores (TEST_LANES=2: TensorFlow, and PyTorch then JAX, which left a core
# idle once TensorFlow's lane ended). Each line is prefixed with its backend. TEST_LANES=1 runs
# the three one after another.
set -u
cd "$(dirname "$0")"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

suites() {  # the suite on each backend named, in turn; non-zero if any failed
  local status=0 backend start
  for backend in "$@"; do
    echo "=== KERAS_BACKEND=$backend"
    start=$SECONDS
    # Own temporary folder per backend: the lanes never clean up each other's files.
    KERAS_DDPM_ONCE=$backend KERAS_BACKEND=$backend python -m pytest -q --durations=10 -p no:cacheprovider \
      --basetemp="$work/tmp-$backend" "${pytest_args[@]}" || status=1
    echo "=== $backend: $((SECONDS - start)) s"
  done
  return $status
}

lane() {  # runs `suites "$@"` with each output line prefixed; its status goes to a file
  local name=$1
  shift
  { suites "$@"; echo $? >"$work/$name.status"; } 2>&1 | sed -u "s/^/[$name] /"
}

threads() {  # the lanes' share of the cores, as each framework's intra-op thread count
  # torch (OpenMP) and TensorFlow (Eigen) otherwise start a thread per core in every lane, and
  # their threads spin-wait for each other while the other lanes hold the cores. JAX's XLA CPU
  # client has no such setting; its lane keeps one pool a core.
  local count=$(($(nproc) / $1))
  [ "$count" -ge 1 ] || count=1
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$count}
  export TF_NUM_INTRAOP_THREADS=${TF_NUM_INTRAOP_THREADS:-$count}
}

pytest_args=("$@")
start=$SECONDS
if [ "${TEST_LANES:-3}" -ge 3 ] && [ "$(nproc)" -ge 2 ]; then
  threads 3
  lanes=(tensorflow torch jax)
  lane tensorflow tensorflow &
  lane torch torch &
  lane jax jax &
  wait
elif [ "${TEST_LANES:-3}" -ge 2 ] && [ "$(nproc)" -ge 2 ]; then
  threads 2
  lanes=(tensorflow torch+jax)
  lane tensorflow tensorflow &
  lane torch+jax torch jax &
  wait
else
  lanes=(all)
  lane all tensorflow torch jax
fi
echo "=== all backends: $((SECONDS - start)) s"
status=0
for name in "${lanes[@]}"; do
  [ "$(cat "$work/$name.status" 2>/dev/null)" = 0 ] || status=1
done
exit $status
