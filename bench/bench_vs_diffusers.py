r"""Training and inference throughput of `ddpm_cifar10` on each backend beside diffusers (not a
test).

    pip install -r bench/requirements.txt
    python bench/bench_vs_diffusers.py --batch-size 8
    # on a CUDA GPU (issue 9's setting; the machine lent to us has no TensorFlow):
    python bench/bench_vs_diffusers.py --batch-size 128 --precision bfloat16 \
        --variants peak,diffusers,torch,jax

Runs, each in its own process (a Keras backend is fixed at import; a fresh process also gives
each its own peak RSS), in one go:
  peak         the machine's matmul peak in the benchmark's precision: the best of repeated torch.mm
               on 2048x2048 float32 on a CPU, 8192x8192 on a GPU (bf16 there with
               --precision bfloat16).
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
excluded); inference figures are image-forwards/s (batch x DDIM steps / wall time) of the
`generate` calls after the first (`--sample-repeats` of them). MFU = FLOPs an image (counted
from our Keras model by `keras_ddpm.flops`; x3 for a training step) x images/s / the measured peak.
RSS is each process's peak resident memory. Prints a table with each figure as a ratio to
diffusers' and writes bench/bench_vs_diffusers.json (bench/bench_vs_diffusers_cuda.json on a GPU).

The 2-core machine this project is developed on is shared, and its speed drifts: diffusers alone
trained at 2.25 images/s in one round and 2.73 in the next, minutes apart. So on a CPU each Keras
variant is paired (`--pair`, on by default without a GPU): a second process holds diffusers, and
after each timed training step of the variant it runs one of its own (and one sampling run after
each timed `generate`), each on its own clock. The "x diffusers" ratios are those of the pairs,
which see the same machine (their summed times); the diffusers row stays its own run. `--rounds N`
runs the variants N times in turn (diffusers, then each backend, then again) and reports each
one's median, with every round's figure kept in the JSON.
"""

import argparse
import contextlib
import json
import resource
import statistics
import time

from common import importable_torchvision
from common import run_child
from common import write_json

PARTNER_PREFIX = "partner: "  # the partner's answers, told apart from anything a library prints
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
    name = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    return {"matmul_gflops": 2 * n**3 / best / 1e9, "device": name, "dtype": str(dtype)}


def diffusers_unet():
    importable_torchvision()
    from diffusers import UNet2DModel

    from keras_ddpm.convert.diffusers import PUBLISHED_UNETS

    # google/ddpm-cifar10-32's architecture: attention at 16x16 (the second level), one head.
    return UNet2DModel(**PUBLISHED_UNETS["google/ddpm-cifar10-32"], dropout=0.1)


def diffusers_train_step(batch_size, device, bf16):
    """diffusers' training step on random images: returns (step, unet)."""
    import torch

    importable_torchvision()
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


def diffusers_sampler(unet, batch_size, sample_steps, device, bf16):
    """A function that runs diffusers' DDIM sampling loop once (`sample_steps` forward passes)."""
    import torch
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler(num_train_timesteps=1000)

    @torch.no_grad()
    def sample():
        ddim.set_timesteps(sample_steps)
        x = torch.randn(batch_size, 3, 32, 32, device=device)
        for t in ddim.timesteps:
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                prediction = unet(x, t).sample
            x = ddim.step(prediction.float(), t, x).prev_sample
        synchronize()
        return x

    return sample


def measure_diffusers(args):
    device = torch_device()
    bf16 = args.precision == "bfloat16"
    train_step, unet = diffusers_train_step(args.batch_size, device, bf16)
    train_seconds = timed_steps(train_step, args.warmup_steps, args.train_steps)
    rss = peak_rss_mib()

    unet.eval()
    sample = diffusers_sampler(unet, args.batch_size, args.sample_steps, device, bf16)
    sample()
    start = time.perf_counter()
    sample()
    return result(args, train_seconds, time.perf_counter() - start, rss)


def serve_diffusers(args):
    """The partner of a paired run: builds diffusers' training step and sampler, says "ready",
    then for each line "train" or "sample" on stdin runs one (a training step, or a sampling run)
    and answers its wall time in seconds, until stdin closes."""
    import sys

    device = torch_device()
    bf16 = args.precision == "bfloat16"
    train_step, unet = diffusers_train_step(args.batch_size, device, bf16)
    sample = diffusers_sampler(unet, args.batch_size, args.sample_steps, device, bf16)
    for _ in range(args.warmup_steps):
        train_step()
    with eval_mode(unet):
        sample()
    print(PARTNER_PREFIX + "ready", flush=True)
    for line in sys.stdin:
        start = time.perf_counter()
        if line.strip() == "sample":
            with eval_mode(unet):
                sample()
        else:
            train_step()
            synchronize()
        print(f"{PARTNER_PREFIX}{time.perf_counter() - start}", flush=True)


@contextlib.contextmanager
def eval_mode(module):
    module.eval()
    try:
        yield
    finally:
        module.train()


class DiffusersPartner:
    """diffusers in a process of its own, run step by step in turn with the measured one.

    The machines this is measured on are shared, and their speed drifts by 10% or more within a
    minute; two runs one after the other compare the drift as much as the code. Adjacent steps
    of a paired run see the same machine, so a drift that lasts longer than a step cancels out
    of their ratio (a single pair still varies by about 10%: report the ratio of the sums).
    """

    def __init__(self, args):
        import subprocess
        import sys

        argv = as_argv(
            args, lambda key: key in ("batch_size", "warmup_steps", "sample_steps", "precision")
        )
        self.process = subprocess.Popen(
            [sys.executable, __file__, *argv, "--child", "diffusers-partner"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.answer()  # "ready"
        self.train_seconds, self.sample_seconds = [], []

    def answer(self):
        for line in self.process.stdout:
            if line.startswith(PARTNER_PREFIX):
                return line[len(PARTNER_PREFIX) :].strip()
        raise RuntimeError(
            f"the diffusers partner process ended (exit status {self.process.wait()})"
        )

    def run(self, what):
        self.process.stdin.write(what + "\n")
        self.process.stdin.flush()
        seconds = float(self.answer())
        (self.sample_seconds if what == "sample" else self.train_seconds).append(seconds)
        return seconds

    def close(self):
        self.process.stdin.close()
        self.process.wait()


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
    # the last warm-up step ends. shuffle=False: the batches are copies of one batch, so shuffling
    # would only add Keras' gather of numpy arrays to every measured step (docs/performance.md).
    partner = DiffusersPartner(args) if args.pair == "yes" else None
    timer = make_step_timer(partner, args.warmup_steps)
    model.fit(
        np.repeat(images, steps, axis=0),
        batch_size=args.batch_size,
        epochs=1,
        verbose=0,
        callbacks=[timer],
        shuffle=False,
    )
    # each step from the end of the one before
    train_seconds = timer.seconds[args.warmup_steps - 1 :]
    rss = peak_rss_mib()

    options = dict(sampler="ddim", steps=args.sample_steps, seed=0)
    model.generate(args.batch_size, **options)
    sample_seconds = []
    for _ in range(args.sample_repeats):
        start = time.perf_counter()
        model.generate(args.batch_size, **options)
        sample_seconds.append(time.perf_counter() - start)
        if partner:
            partner.run("sample")
    row = result(args, statistics.mean(train_seconds), statistics.mean(sample_seconds), rss)
    if partner:
        partner.close()
        row.update(paired_row(args, partner, train_seconds, sample_seconds))
    row["jit_compile"] = bool(model.jit_compile)
    row["keras_backend"] = keras.backend.backend()
    row["dtype_policy"] = keras.config.dtype_policy().name
    return row


def make_step_timer(partner=None, warmup_steps=0):
    import keras

    class StepTimer(keras.callbacks.Callback):
        """Records each training step's wall time, from the end of the step before (reading the
        loss waits for JAX's async dispatch). With a `DiffusersPartner`, runs one of its training
        steps after each timed step, on a clock of its own."""

        def __init__(self):
            super().__init__()
            self.seconds = []
            self.resumed = None

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])
            if self.resumed is not None:
                self.seconds.append(time.perf_counter() - self.resumed)
            if partner and batch >= warmup_steps:
                partner.run("train")
            self.resumed = time.perf_counter()

    return StepTimer()


def paired_row(args, partner, train_seconds, sample_seconds):
    """diffusers' figures measured in turn with a Keras variant's, and the ratios of the pairs."""
    return {
        "paired_diffusers_train_images_per_s": args.batch_size
        / statistics.mean(partner.train_seconds),
        "paired_diffusers_forward_images_per_s": args.batch_size
        * args.sample_steps
        / statistics.mean(partner.sample_seconds),
        "paired_train_vs_diffusers": sum(partner.train_seconds) / sum(train_seconds),
        "paired_forward_vs_diffusers": sum(partner.sample_seconds) / sum(sample_seconds),
        "paired_train_vs_diffusers_steps": [
            p / s for p, s in zip(partner.train_seconds, train_seconds)
        ],
    }


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

    return {
        "forward_flops": unet_forward_flops(
            keras_ddpm.DiffusionModel.from_preset("ddpm_cifar10").network
        )
    }


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=8, help="timed training steps")
    parser.add_argument(
        "--sample-steps", type=int, default=10, help="DDIM steps of the inference run"
    )
    parser.add_argument("--peak-repeats", type=int, default=20)
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the variants this many times, in turn, and report each one's median",
    )
    parser.add_argument(
        "--sample-repeats", type=int, default=2, help="timed `generate` calls of each Keras variant"
    )
    parser.add_argument(
        "--pair",
        choices=["auto", "yes", "no"],
        default="auto",
        help="run diffusers in turn with each Keras variant, step by step (auto: on a CPU)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup_steps < 1 or args.train_steps < 1 or args.sample_repeats < 1:
        parser.error(
            "--warmup-steps, --train-steps and --sample-repeats must be at least 1 (the first "
            "step compiles)."
        )
    if args.child == "diffusers-partner":
        serve_diffusers(args)
        return
    if args.child:
        measure = {"flops": count_flops, "peak": measure_peak, "diffusers": measure_diffusers}.get(
            args.child, measure_keras
        )
        print(json.dumps(measure(args)))
        return

    if args.pair == "auto":
        import torch

        args.pair = "no" if torch.cuda.is_available() else "yes"
    argv = as_argv(args, lambda key: key not in ("variants", "child", "rounds"))
    runs = {}  # name: its row in each round
    for round_ in range(args.rounds):
        for name in ["flops"] * (round_ == 0) + args.variants.split(","):
            label = name if args.rounds == 1 else f"{name} (round {round_ + 1} of {args.rounds})"
            row = run_child(__file__, argv + ["--child", name], VARIANTS.get(name, "torch"), label)
            if row is not None:
                runs.setdefault(name, []).append(row)
    report(args, {name: combine_rounds(rows) for name, rows in runs.items()})


def as_argv(args, keep):
    """The parsed arguments whose names pass `keep`, as command-line flags for a child process."""
    return [f"--{key.replace('_', '-')}={value}" for key, value in vars(args).items() if keep(key)]


def combine_rounds(rows):
    """One row from a variant's rounds: the median of each throughput, the best matmul peak and
    the largest RSS; each round's throughputs are kept beside them."""
    row = dict(rows[0])
    if len(rows) == 1:
        return row
    for key in (
        "train_images_per_s",
        "forward_images_per_s",
        "paired_diffusers_train_images_per_s",
        "paired_diffusers_forward_images_per_s",
        "paired_train_vs_diffusers",
        "paired_forward_vs_diffusers",
    ):
        if key in row:
            row[key] = statistics.median(r[key] for r in rows)
            row[key + "_rounds"] = [r[key] for r in rows]
    if "paired_train_vs_diffusers_steps" in row:
        row["paired_train_vs_diffusers_steps"] = [
            ratio for r in rows for ratio in r["paired_train_vs_diffusers_steps"]
        ]
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
    print(
        f"\nddpm_cifar10 (35.7M parameters), batch {args.batch_size}, {args.precision}; "
        f"{flops / 1e9:.2f} GFLOPs a forward"
        f" pass an image, x3 a training step"
        + (f"; {machine['device']}, matmul peak {peak:.1f} GFLOP/s" if peak else "")
    )
    header = (
        f"{'':<16}{'train img/s':>12}{'x diffusers':>12}{'MFU':>7}"
        f"{'fwd img/s':>11}{'x diffusers':>12}{'MFU':>7}{'peak RSS MiB':>14}"
    )
    print(header)
    if any("paired_train_vs_diffusers" in row for row in rows.values()):
        print(
            "(x diffusers: each backend's ratio to diffusers run step by step in turn with it, in "
            "a process of its own)"
        )
    for name, row in rows.items():
        train, forward = row["train_images_per_s"], row["forward_images_per_s"]
        for key, value in (("train_vs_diffusers", train), ("forward_vs_diffusers", forward)):
            # Paired: the ratio to diffusers run in turn with this variant. Else to diffusers' own
            # run.
            row[key] = row.get("paired_" + key) or (
                value / base[key.replace("vs_diffusers", "images_per_s")] if base else None
            )
        row["train_mfu"] = 3 * flops * train / (peak * 1e9) if peak else None
        row["forward_mfu"] = flops * forward / (peak * 1e9) if peak else None
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        print(
            f"{name:<16}{train:>12.2f}"
            f"{fmt(row['train_vs_diffusers'], '>11.2f')}x{fmt(row['train_mfu'], '>7.0%')}"
            f"{forward:>11.2f}"
            f"{fmt(row['forward_vs_diffusers'], '>11.2f')}x{fmt(row['forward_mfu'], '>7.0%')}"
            f"{row['peak_rss_mib']:>14.0f}"
        )
    import torch  # which file: the CPU figures and a GPU's are kept apart

    write_json(
        "bench_vs_diffusers_cuda.json" if torch.cuda.is_available() else "bench_vs_diffusers.json",
        args,
        {
            "forward_flops": flops,
            "matmul_peak_gflops": peak,
            "device": machine.get("device"),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
