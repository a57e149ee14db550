"""Sampling wall time per backend: the per-step loop vs. the compiled reverse loop (not a test).

    python bench/bench_sampling.py --preset mnist --num-images 64
    python bench/bench_sampling.py --cases ddpm:1000,ddim:50,dpm_solver:20 --loops compiled

Each backend runs in its own process. For each sampler, `generate(compile_loop=False)` dispatches
one compiled step per call (the classic loop) and `generate()` runs the whole chain as one
compiled program (XLA on TensorFlow and JAX, eager on PyTorch). Times exclude compilation (a
warm-up call first; the last column is the warm-up call's time) unless `--no-warmup`, which
times the first call, compilation included, for chains too long to run twice.
"""

import argparse
import time

from common import measure_per_backend
from common import write_json


def measure(args):
    import keras

    import keras_ddpm

    model = keras_ddpm.DiffusionModel.from_preset(args.preset, seed=0)
    rows = []
    for case in args.cases.split(","):
        sampler, steps = case.split(":")
        steps = int(steps)
        for compiled in [loop == "compiled" for loop in args.loops.split(",")]:
            options = dict(sampler=sampler, steps=steps, seed=0, compile_loop=compiled)
            first = _seconds(model.generate, args.num_images, **options)
            # --no-warmup: the first call's time (compilation included) is the figure.
            seconds = (
                first if args.no_warmup else _seconds(model.generate, args.num_images, **options)
            )
            rows.append(
                {
                    "backend": keras.backend.backend(),
                    "sampler": f"{sampler}-{steps}",
                    "loop": "compiled" if compiled else "per-step",
                    "seconds": seconds,
                    "first_call_seconds": first,
                }
            )
    return rows


def _seconds(fn, *args, **kwargs):
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="mnist")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument(
        "--cases", default="ddim:50,dpm_solver:20", help="sampler:steps, comma-separated"
    )
    parser.add_argument("--loops", default="per-step,compiled", help="per-step and/or compiled")
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="time the first call (compilation included); for long chains",
    )
    parser.add_argument("--json", default="bench_sampling.json", help="file name under bench/")
    args, found = measure_per_backend(parser, __file__, measure)
    rows = [row for backend_rows in found.values() for row in backend_rows]
    print(f"preset {args.preset}: {args.num_images} images")
    print(
        f"{'backend':<12}{'sampler':<16}{'per-step s':>12}{'compiled s':>12}"
        f"{'speed-up':>10}{'1st call s':>12}"
    )
    for backend in dict.fromkeys(r["backend"] for r in rows):
        for sampler in dict.fromkeys(r["sampler"] for r in rows):
            pair = {
                r["loop"]: r for r in rows if r["backend"] == backend and r["sampler"] == sampler
            }
            a, b = (
                pair[loop]["seconds"] if loop in pair else None for loop in ("per-step", "compiled")
            )
            first = pair.get("compiled", next(iter(pair.values())))["first_call_seconds"]
            cells = [f"{v:>12.2f}" if v is not None else f"{'-':>12}" for v in (a, b)]
            ratio = f"{a / b:>9.2f}x" if a and b else f"{'-':>10}"
            print(f"{backend:<12}{sampler:<16}{cells[0]}{cells[1]}{ratio}{first:>12.2f}")
    write_json(args.json, args, rows)


if __name__ == "__main__":
    main()
