"""What the benchmark scripts share: one child process per Keras backend (a backend is fixed at
import)."""

import argparse
import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "torch", "jax")


def run_child(script, argv, backend, label):
    """Runs `python script *argv` with KERAS_BACKEND=backend; returns the JSON its last line
    printed.

    A child that fails is reported on stdout (with its stderr's tail) and gives None.
    """
    # keras_ddpm imports Keras, which loads its backend's framework in this process too: make it
    # the child's (installed) rather than Keras' default, TensorFlow, which may not be.
    os.environ.setdefault("KERAS_BACKEND", backend)
    from keras_ddpm.backend import child_environment

    env = child_environment(backend)
    out = subprocess.run([sys.executable, script, *argv], env=env, capture_output=True, text=True)
    if out.returncode:
        print(f"{label}: failed\n{out.stderr[-2000:]}", flush=True)
        return None
    print(f"{label}: done", flush=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure_per_backend(parser, script, measure):
    """Parses the command line (adding --backends and the children's hidden --child flag).

    In a child, prints `measure(args)` as JSON and exits. Otherwise runs one child per backend
    and returns (args, {backend: its result}).
    """
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args)))
        sys.exit(0)
    return args, run_per_backend(script, sys.argv[1:], args.backends.split(","))


def run_per_backend(script, argv, backends):
    """Runs `python script --child *argv` under each backend; returns {backend: the JSON its
    last line printed}.

    A backend whose child fails is reported on stdout and left out.
    """
    results = {}
    for backend in backends:
        result = run_child(script, ["--child", *argv], backend, backend)
        if result is not None:
            results[backend] = result
    return results


def write_json(name, args, results):
    """bench/NAME.json with the arguments beside the results."""
    with open(os.path.join(REPO, "bench", name), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=2)


def importable_torchvision():
    """Lets diffusers import where torchvision's wheel is a CUDA build beside a CPU torch (the
    README's test command installs it so): its C extension cannot load, and its import stops
    where it registers fake kernels of two detection operators; their schemas declared first let
    it import (tests/fid_testing.py, `import_torchvision`). diffusers' UNet needs none of them.
    Call it before importing diffusers."""
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or hasattr(importable_torchvision, "schemas"):
        return
    try:
        torch.ops.load_library(os.path.join(os.path.dirname(spec.origin), "_C.so"))
    except (OSError, RuntimeError):
        schemas = torch.library.Library("torchvision", "DEF")
        for name in ("nms", "qnms"):
            schemas.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        importable_torchvision.schemas = schemas  # kept alive
