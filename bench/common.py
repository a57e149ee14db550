"""What the benchmark scripts share: one child process per Keras backend (a backend is fixed at import)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "torch", "jax")


def run_per_backend(script, argv, backends):
    """Runs `python script --child *argv` under each backend; returns {backend: the JSON its last line printed}.

    A backend whose child fails is reported on stdout and left out.
    """
    results = {}
    for backend in backends:
        env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3"}
        out = subprocess.run([sys.executable, script, "--child", *argv], env=env, capture_output=True, text=True)
        if out.returncode:
            print(f"{backend}: failed\n{out.stderr[-2000:]}", flush=True)
            continue
        results[backend] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{backend}: done", flush=True)
    return results


def write_json(name, args, results):
    """bench/NAME.json with the arguments beside the results."""
    with open(os.path.join(REPO, "bench", name), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=2)
