"""Training and inference throughput of `ddpm_cifar10` on each backend beside diffusers (not a test).

    pip install -r bench/requirements.txt
    python bench/bench_vs_diffusers.py --batch-size 8
    # on a CUDA GPU (issue 9's setting; the machine lent to us has no TensorFlow):
    python bench/bench_vs_diffusers.py --batch-size 128 --precision bfloat16 --variants peak,diffusers,torch,jax

Runs, each in its own process (a Keras backend is fixed at import; a fresh process also gives
each its own peak RSS), in one go:
  peak         the machine's matmul peak in the benchmark's precision: the best of repeated torch.mm
               on 2048x2048 float32 on a CPU, 8192x8192 on a GPU (bf16 there with --precision bfloat16).
  diffusers    `UNet2DModel` with the DDPM CIFAR-10 architecture (35.7M parameters, as ours),
               trained with torch's Adam on the same shapes and the same work per step as ours:
               epsilon MSE at uniform t, gradient clipping to norm 1, Adam, an EMA update
               (diffusers' own `EMAModel`, foreach). Inference: `DDIMScheduler` steps.
  tensorflow-xla, tensorflow, torch, jax
               `DiffusionModel.from_preset("ddpm_cifar10")` through `model.fit` (TensorFlow with
               and without `jit_compile`); inference is `model.generate(sampler="ddim")`.

--precision bfloat16 is Keras' "mixed_bfloat16" policy (float32 weights, bf16 compute) and, for
diffusers, `torch.autocast(dtype=torch.bfloat16)` over the forward pass and the loss: the usual
way to train each in bf16. Everything runs on CUDA when torch (or JAX) sees a GPU.

Training figures are images/s over `--train-steps` steps after `--warmup-steps` (compilation
excluded); inference figures are image-forwards/s (batch x DDIM steps / wall time) of a second
`generate` call. MFU = FLOPs an image (counted from our Keras model by `keras_ddpm.flops`; x3 for
a training step) x images/s / the measured peak. RSS is each process's peak resident memory.
Prints a table with each figure as a ratio to diffusers' and writes bench/bench_vs_diffusers.json
(bench/bench_vs_diffusers_cuda.json on a GPU).

The 2-core machine this project is developed on is shared: the same code's ratio to diffusers
moved by 5% or more between runs. `--rounds N` runs the variants N times in turn (diffusers,
then each backend, then again) and reports each one's median, with every round's figure kept
in the JSON.
"""

import argparse
import json
import resource
import statistics
import time

from common import run_child
from common import write_json

VARIANTS = {  # name: KERAS_BACKEND
    "peak": "torch",
    "diffusers": "torch",
    "tensorflow-xla": "tensorflow",
    "tensorflow": "tensorflow",
    "torch": "torch",
    "jax": "jax",
}


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def torch_device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize():
    """Waits for the GPU's queued work (CUDA kernels run asynchronously); nothing on a CPU."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_peak(args):
    import torch

    device = torch_device()
    n = 8192 if device == "cuda" else 2048
    dtype = torch.bfloat16 if args.precision == "bfloat16" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(args.peak_repeats):
        synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize()
        best = min(best, time.perf_counter() - start)
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return {"matmul_gflops": 2 * n**3 / best / 1e9, "device": name, "dtype": str(dtype)}


def diffusers_unet():
    from diffusers import UNet2DModel

    # google/ddpm-cifar10-32's architecture: attention at 16x16 (the second level), one head.
    return UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
        block_out_channels=(128, 256, 256, 256),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        dropout=0.1, norm_num_groups=32, norm_eps=1e-6, downsample_padding=0,
        flip_sin_to_cos=False, freq_shift=1, attention_head_dim=None,
    )


def diffusers_train_step(batch_size, device, bf16):
    """diffusers' training step on random images: returns (step, unet)."""
    import torch
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(0)
    unet = diffusers_unet().to(device)
    ema = EMAModel(unet.parameters(), decay=0.9999, foreach=True)
    optimizer = torch.optim.Adam(unet.parameters(), lr=2e-4)  # torch's default: foreach on CUDA
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    images = torch.rand(batch_size, 3, 32, 32, device=device) * 2 - 1

    def train_step():
        noise = torch.randn_like(images)
        t = torch.randint(0, 1000, (batch_size,), device=device)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            prediction = unet(scheduler.add_noise(images, noise, t), t).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema.step(unet.parameters())

    unet.train()
    return train_step, unet


def measure_diffusers(args):
    import torch
    from diffusers import DDIMScheduler

    device = torch_device()
    bf16 = args.precision == "bfloat16"
    train_step, unet = diffusers_train_step(args.batch_size, device, bf16)
    train_seconds = timed_steps(train_step, args.warmup_steps, args.train_steps)
    rss = peak_rss_mib()

    ddim = DDIMScheduler(num_train_timesteps=1000)
    unet.eval()

    @torch.no_grad()
    def sample():
        ddim.set_timesteps(args.sample_steps)
        x = torch.randn(args.batch_size, 3, 32, 32, device=device)
        for t in ddim.timesteps:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                prediction = unet(x, t).sample
            x = ddim.step(prediction.float(), t, x).prev_sample
        synchronize()
        return x

    sample()
    start = time.perf_counter()
    sample()
    return result(args, train_seconds, time.perf_counter() - start, rss)


def measure_keras(args):
    import keras
    import numpy as np

    import keras_ddpm

    if args.precision == "bfloat16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    model = keras_ddpm.DiffusionModel.from_preset("ddpm_cifar10", seed=0)
    jit = {"tensorflow-xla": True, "tensorflow": False}.get(args.child)
    model.compile(jit_compile=jit)
    images = np.random.default_rng(0).uniform(-1, 1, (args.batch_size, 32, 32, 3)).astype("float32")
    steps = args.warmup_steps + args.train_steps
    # One `fit` call (a second call may build a new iterator and retrace); the clock starts when
    # the last warm-up step ends. shuffle=False: the batches are copies of one batch, and Keras'
    # shuffled gather of numpy arrays cost 8 ms a step on the GPU machine (38.4 against 30.2 ms).
    timer = make_step_timer()
    model.fit(np.repeat(images, steps, axis=0), batch_size=args.batch_size, epochs=1, verbose=0, callbacks=[timer],
              shuffle=False)
    train_seconds = (timer.ends[-1] - timer.ends[args.warmup_steps - 1]) / args.train_steps
    rss = peak_rss_mib()

    options = dict(sampler="ddim", steps=args.sample_steps, seed=0)
    model.generate(args.batch_size, **options)
    start = time.perf_counter()
    model.generate(args.batch_size, **options)
    row = result(args, train_seconds, time.perf_counter() - start, rss)
    row["jit_compile"] = bool(model.jit_compile)
    row["keras_backend"] = keras.backend.backend()
    row["dtype_policy"] = keras.config.dtype_policy().name
    return row


def make_step_timer():
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Records when each training step ends (reading the loss waits for JAX's async dispatch)."""

        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])
            self.ends.append(time.perf_counter())

    return StepTimer()


def timed_steps(step, warmup, steps):
    for _ in range(warmup):
        step()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return (time.perf_counter() - start) / steps


def result(args, train_step_seconds, sample_seconds, rss):
    return {
        "train_images_per_s": args.batch_size / train_step_seconds,
        "forward_images_per_s": args.batch_size * args.sample_steps / sample_seconds,
        "peak_rss_mib": rss,
    }


def count_flops(args):
    import os

    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras_ddpm
    from keras_ddpm.flops import unet_forward_flops

    return {"forward_flops": unet_forward_flops(keras_ddpm.DiffusionModel.from_preset("ddpm_cifar10").network)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=8, help="timed training steps")
    parser.add_argument("--sample-steps", type=int, default=10, help="DDIM steps of the inference run")
    parser.add_argument("--peak-repeats", type=int, default=20)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the variants this many times, in turn, and report each one's median")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        measure = {"flops": count_flops, "peak": measure_peak, "diffusers": measure_diffusers}.get(args.child, measure_keras)
        print(json.dumps(measure(args)))
        return

    argv = [f"--{key.replace('_', '-')}={value}" for key, value in vars(args).items()
            if key not in ("variants", "child", "rounds")]
    runs = {}  # name: its row in each round
    for round_ in range(args.rounds):
        for name in ["flops"] * (round_ == 0) + args.variants.split(","):
            label = name if args.rounds == 1 else f"{name} (round {round_ + 1} of {args.rounds})"
            row = run_child(__file__, argv + ["--child", name], VARIANTS.get(name, "torch"), label)
            if row is not None:
                runs.setdefault(name, []).append(row)
    report(args, {name: combine_rounds(rows) for name, rows in runs.items()})


def combine_rounds(rows):
    """One row from a variant's rounds: the median of each throughput, the best matmul peak and
    the largest RSS; each round's throughputs are kept beside them."""
    row = dict(rows[0])
    if len(rows) == 1:
        return row
    for key in ("train_images_per_s", "forward_images_per_s"):
        if key in row:
            row[key] = statistics.median(r[key] for r in rows)
            row[key.replace("_per_s", "_per_s_rounds")] = [r[key] for r in rows]
    if "matmul_gflops" in row:
        row["matmul_gflops"] = max(r["matmul_gflops"] for r in rows)
    if "peak_rss_mib" in row:
        row["peak_rss_mib"] = max(r["peak_rss_mib"] for r in rows)
    return row


def report(args, rows):
    flops = rows.pop("flops")["forward_flops"]
    machine = rows.pop("peak", {})
    peak = machine.get("matmul_gflops")
    base = rows.get("diffusers")
    print(f"\nddpm_cifar10 (35.7M parameters), batch {args.batch_size}, {args.precision}; {flops / 1e9:.2f} GFLOPs a forward"
          f" pass an image, x3 a training step" + (f"; {machine['device']}, matmul peak {peak:.1f} GFLOP/s" if peak else ""))
    header = f"{'':<16}{'train img/s':>12}{'x diffusers':>12}{'MFU':>7}{'fwd img/s':>11}{'x diffusers':>12}{'MFU':>7}{'peak RSS MiB':>14}"
    print(header)
    for name, row in rows.items():
        train, forward = row["train_images_per_s"], row["forward_images_per_s"]
        row["train_vs_diffusers"] = train / base["train_images_per_s"] if base else None
        row["forward_vs_diffusers"] = forward / base["forward_images_per_s"] if base else None
        row["train_mfu"] = 3 * flops * train / (peak * 1e9) if peak else None
        row["forward_mfu"] = flops * forward / (peak * 1e9) if peak else None
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        print(f"{name:<16}{train:>12.2f}{fmt(row['train_vs_diffusers'], '>11.2f')}x{fmt(row['train_mfu'], '>7.0%')}"
              f"{forward:>11.2f}{fmt(row['forward_vs_diffusers'], '>11.2f')}x{fmt(row['forward_mfu'], '>7.0%')}"
              f"{row['peak_rss_mib']:>14.0f}")
    import torch  # which file: the CPU figures and a GPU's are kept apart

    write_json("bench_vs_diffusers_cuda.json" if torch.cuda.is_available() else "bench_vs_diffusers.json", args,
               {"forward_flops": flops, "matmul_peak_gflops": peak, "device": machine.get("device"), "rows": rows})


if __name__ == "__main__":
    main()
