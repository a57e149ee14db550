#!/usr/bin/env bash
# Runs the whole test suite once per Keras backend (a backend is chosen at import time,
# so each needs its own process). Extra arguments go to pytest, e.g. ./run_tests.sh -m "not slow".
set -u
cd "$(dirname "$0")"
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
status=0
for backend in tensorflow torch jax; do
  echo "=== KERAS_BACKEND=$backend"
  start=$SECONDS
  KERAS_BACKEND=$backend python -m pytest -q --durations=10 "$@" || status=1
  echo "=== $backend: $((SECONDS - start)) s"
done
exit $status
