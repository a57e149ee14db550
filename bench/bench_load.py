"""Seconds to load a `.keras` file, each load in a fresh process, on every backend:
`keras_ddpm.load_model` (the networks built with zero kernels, then the file's weights) beside the
same load through Keras' own `from_config` (random kernels drawn first, as before 2026-11-28).

    python bench/bench_load.py [--preset tiny] [--repeats 1] [--json bench/bench_load.json]

On JAX every new kernel shape's random draw is a program to compile, so the draws were most of a
load's time; TensorFlow and PyTorch draw them in a fraction of it.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import BACKENDS  # noqa: E402
from common import run_child  # noqa: E402
from common import write_json  # noqa: E402

WAYS = ("random_kernels_first", "keras_ddpm")


def child(args):
    import keras

    from keras_ddpm import DiffusionModel
    from keras_ddpm import backend
    from keras_ddpm import load_model

    backend.configure_xla_cpu()  # as the CLI does
    if args.way == "save":
        DiffusionModel.from_preset(args.preset, seed=0).save(args.path)
        return {}
    if args.way == "random_kernels_first":
        DiffusionModel.from_config = classmethod(
            lambda cls, config, custom_objects=None: keras.Model.from_config.__func__(
                cls, config, custom_objects
            )
        )
    start = time.perf_counter()
    load_model(args.path)
    return {"seconds": time.perf_counter() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--json", default=None, help="a file name under bench/")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--way", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import json

        print(json.dumps(child(args)))
        return
    script = os.path.abspath(__file__)
    backends = args.backends.split(",")
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        base = ["--preset", args.preset, "--path", path]
        run_child(script, ["--child", "--way", "save", *base], backends[0], "save")
        for backend in backends:
            row = {}
            for way in WAYS:
                times = [
                    run_child(script, ["--child", "--way", way, *base], backend, f"{backend} {way}")
                    for _ in range(args.repeats)
                ]
                row[way] = min(t["seconds"] for t in times) if all(times) else None
            results[backend] = row
    print(f"{'backend':<12}{'random kernels first':>22}{'keras_ddpm':>12}{'ratio':>8}")
    for backend, row in results.items():
        before, after = row["random_kernels_first"], row["keras_ddpm"]
        ratio = f"{before / after:.1f}x" if before and after else "-"
        print(f"{backend:<12}{before or 0:>20.2f} s{after or 0:>10.2f} s{ratio:>8}")
    if args.json:
        write_json(args.json, args, results)


if __name__ == "__main__":
    main()
