r"""Trains and samples the tiny preset at every batch size and precision on this machine's device,
and times a training step of a larger preset: the PyTorch convolution paths (oneDNN or cuDNN,
and torch's fallback) end to end.

    KERAS_BACKEND=torch python bench/torch_batch_precision.py
    KERAS_BACKEND=torch python bench/torch_batch_precision.py \
        --time-preset ddpm_cifar10 --time-batch 128 --time-precision bf16

Prints one row per (precision, batch size): the loss of each step (finite or the error), and the
seconds a step took after the first; then, with --time-preset, the median step time. JSON with
--json PATH.
"""

import argparse
import json
import statistics
import sys
import time

import keras
import numpy as np

from keras_ddpm import DiffusionModel
from keras_ddpm import training


class StepTimes(keras.callbacks.Callback):
    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._start)
        self.losses.append(float(logs["loss"]))

    def on_train_begin(self, logs=None):
        self.times, self.losses = [], []


def train(preset, batch, precision, steps, seed=0):
    """(losses, step seconds, error) of `steps` steps of `preset` at `batch` in `precision`."""
    try:
        training.set_mixed_precision(precision)
        model = DiffusionModel.from_preset(preset, seed=seed)
        model.compile()
        shape = model.image_shape
        images = (
            np.random.default_rng(seed).uniform(-1, 1, (batch * steps, *shape)).astype("float32")
        )
        timer = StepTimes()
        model.fit(images, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
        model.generate(min(batch, 2), steps=3, seed=seed)
        return timer.losses, timer.times, None
    except Exception as error:  # the row reports it; the other rows still run
        return [], [], f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    finally:
        training.set_mixed_precision("no")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", default="1,2,3,7,8")
    parser.add_argument("--precisions", default="no,bf16,fp16")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--time-preset", default=None, help="Also time this preset's training step."
    )
    parser.add_argument("--time-batch", type=int, default=128)
    parser.add_argument("--time-precision", default="bf16")
    parser.add_argument("--time-steps", type=int, default=25)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(
        f"backend {keras.backend.backend()}, torch {torch.__version__}, keras "
        f"{keras.__version__}, device {device}"
    )
    rows = []
    for precision in args.precisions.split(","):
        for batch in map(int, args.batch_sizes.split(",")):
            losses, times, error = train("tiny", batch, precision, args.steps)
            ok = error is None and all(np.isfinite(losses))
            rows.append(
                {"precision": precision, "batch": batch, "losses": losses, "ok": ok, "error": error}
            )
            detail = (
                error
                or " ".join(f"{loss:.4f}" for loss in losses)
                + f"  ({statistics.median(times[1:]) * 1e3:.1f} ms/step)"
            )
            print(
                f"tiny {precision:>4} batch {batch}: {'ok ' if ok else 'FAIL'} {detail}", flush=True
            )
    timing = None
    if args.time_preset:
        losses, times, error = train(
            args.time_preset, args.time_batch, args.time_precision, args.time_steps
        )
        if error:
            print(f"{args.time_preset} batch {args.time_batch} {args.time_precision}: FAIL {error}")
        else:
            median = statistics.median(times[3:])
            timing = {
                "preset": args.time_preset,
                "batch": args.time_batch,
                "precision": args.time_precision,
                "median_step_s": median,
            }
            print(
                f"{args.time_preset} batch {args.time_batch} {args.time_precision}: median step "
                f"{median * 1e3:.1f} ms "
                f"({args.time_batch / median:.0f} images/s) over {len(times) - 3} steps; last "
                f"loss {losses[-1]:.4f}"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "rows": rows, "timing": timing}, f, indent=2)
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
