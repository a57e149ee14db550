"""Training-step and sampling speed of a preset on each Keras backend (not a test).

    python bench/bench_core.py --preset mnist --batch-size 64 --steps 10 --num-images 64

Each backend runs in its own process (a backend is fixed at import). Prints a table and
writes bench/bench_core.json. Times exclude compilation: the first `fit` call and the first
sampling step are warm-ups.
"""

import argparse
import time

from common import measure_per_backend
from common import write_json


def measure(args):
    import keras
    import numpy as np

    import keras_ddpm

    model = keras_ddpm.DiffusionModel.from_preset(args.preset, seed=0)
    model.compile()
    shape = model.image_shape
    x = (
        np.random.default_rng(0)
        .uniform(-1, 1, (args.batch_size * args.steps, *shape))
        .astype("float32")
    )
    model.fit(x[: args.batch_size], batch_size=args.batch_size, epochs=1, verbose=0)  # compile
    start = time.perf_counter()
    model.fit(x, batch_size=args.batch_size, epochs=1, verbose=0)
    step_seconds = (time.perf_counter() - start) / args.steps
    model.generate(args.num_images, steps=1, seed=0)  # compile the sampling step
    start = time.perf_counter()
    model.generate(args.num_images, sampler="ddim", steps=args.sample_steps, seed=0)
    sample_seconds = time.perf_counter() - start
    return {
        "backend": keras.backend.backend(),
        "train_step_s": step_seconds,
        "train_images_per_s": args.batch_size / step_seconds,
        "sample_s": sample_seconds,
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="mnist")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="timed training steps")
    parser.add_argument("--num-images", type=int, default=64)
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps")
    args, found = measure_per_backend(parser, __file__, measure)
    rows = list(found.values())
    print(
        f"preset {args.preset}: train batch {args.batch_size}, sampling {args.num_images} images "
        f"with DDIM-{args.sample_steps}"
    )
    print(f"{'backend':<12}{'train s/step':>14}{'images/s':>10}{'sample s':>10}")
    for row in rows:
        print(
            f"{row['backend']:<12}{row['train_step_s']:>14.3f}{row['train_images_per_s']:>10.1f}{row['sample_s']:>10.2f}"
        )
    write_json("bench_core.json", args, rows)


if __name__ == "__main__":
    main()
