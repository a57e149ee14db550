"""Where a GPU training step of `ddpm_cifar10` goes: host time against kernel time (not a test).

    KERAS_BACKEND=jax python bench/profile_gpu_step.py    # Keras' fit, and the bare jitted step
    KERAS_BACKEND=torch python bench/profile_gpu_step.py  # Keras' fit
    python bench/profile_gpu_step.py --diffusers          # diffusers' step (bench_vs_diffusers')

Batch 128, Keras' "mixed_bfloat16" policy (diffusers: bf16 autocast), as `bench_vs_diffusers.py
--batch-size 128 --precision bfloat16`. Prints, in ms a step:
  wall      the mean over --steps steps: `fit` (shuffle=False), or diffusers' Python loop;
  bare      (JAX) the jitted `train_step` called in a loop on one device-resident batch, and the
            time one call takes to return (JAX dispatches asynchronously: this is host work);
  kernels   the GPU's busy time, the sum of kernel durations, from a profiler trace of 5 steps
            (jax.profiler's Perfetto trace, no Python tracer; torch.profiler on PyTorch).
and below it the kernels grouped by name, the longest first, and how many ran under 10 us each.
Wall well over kernels means the step waits on the host; kernels sets the ceiling for the MFU
that `bench_vs_diffusers.py` prints.
"""

import argparse
import glob
import gzip
import json
import re
import sys
import tempfile
import time

import numpy as np

BATCH = 128
TRACED_STEPS = 5


def keras_model(args):
    import keras

    import keras_ddpm

    keras.config.set_dtype_policy("mixed_bfloat16")
    # --dropout 0: the PyTorch step can be captured as one CUDA graph (Keras' torch dropout seeds
    # its generator from a device value at every call, which capture cannot record).
    options = {} if args.dropout is None else {"dropout": args.dropout}
    model = keras_ddpm.DiffusionModel.from_preset(
        "ddpm_cifar10", seed=0, cuda_graph=args.cuda_graph, **options
    )
    model.compile()
    return model


def images(batch):
    return np.random.default_rng(0).uniform(-1, 1, (batch, 32, 32, 3)).astype("float32")


def fit_ms(model, batch, steps):
    data = np.repeat(images(batch), steps, axis=0)
    # Compiles (JAX), or runs PyTorch's 3 eager warm-up steps and captures its CUDA graph.
    model.fit(data[: 4 * batch], batch_size=batch, verbose=0, shuffle=False)
    start = time.perf_counter()
    model.fit(data, batch_size=batch, verbose=0, shuffle=False)
    return (time.perf_counter() - start) / steps * 1e3


def profile_jax(args):
    import jax

    model = keras_model(args)
    print(f"fit:     {fit_ms(model, args.batch_size, args.steps):.1f} ms a step", flush=True)
    step = jax.jit(model.train_step, donate_argnums=0)  # as Keras' JAX trainer jits it
    state = tuple(
        [v.value for v in variables]
        for variables in (
            model.trainable_variables,
            model.non_trainable_variables,
            model.optimizer.variables,
            model.metrics_variables,
        )
    )
    print(f"         {sum(map(len, state))} arrays go into each call", flush=True)
    batch = (jax.device_put(images(args.batch_size)),)

    def run(n):
        nonlocal state
        for _ in range(n):
            _, state = step(state, batch)
        jax.block_until_ready(state)

    run(3)
    start = time.perf_counter()
    run(args.steps)
    print(f"bare:    {(time.perf_counter() - start) / args.steps * 1e3:.1f} ms a step", flush=True)
    start = time.perf_counter()
    _, state = step(state, batch)
    returned = time.perf_counter() - start
    jax.block_until_ready(state)
    print(f"         one call returns after {returned * 1e3:.1f} ms", flush=True)
    options = jax.profiler.ProfileOptions()
    options.python_tracer_level = 0
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder, create_perfetto_trace=True, profiler_options=options):
            run(TRACED_STEPS)
        (path,) = glob.glob(f"{folder}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    gpus = {
        e["pid"] for e in events if e.get("name") == "process_name" and "GPU" in e["args"]["name"]
    }
    kernels = [e for e in events if e.get("ph") == "X" and e["pid"] in gpus]
    busy = sum(e["dur"] for e in kernels) / TRACED_STEPS / 1e3  # trace times are microseconds
    print(f"kernels: {busy:.1f} ms a step ({len(kernels) // TRACED_STEPS} kernels)", flush=True)
    print_kernel_table([(e["name"], e["dur"]) for e in kernels])


def print_kernel_table(kernels, rows=15, small_us=10.0):
    """Kernels by name (numbered copies of one kind together, e.g. XLA's fusion.12 and fusion.40),
    the longest first, and how many kernels ran under `small_us` each: (name, microseconds) pairs
    from `TRACED_STEPS` steps."""
    groups = {}
    for name, duration in kernels:
        kind = re.sub(r"[._]\d+$", "", name)
        count, total = groups.get(kind, (0, 0.0))
        groups[kind] = (count + 1, total + duration)
    small = [duration for _, duration in kernels if duration < small_us]
    print(
        f"         {len(small) // TRACED_STEPS} kernels a step ran under {small_us:.0f} us each, "
        f"{sum(small) / TRACED_STEPS / 1e3:.1f} ms in all"
    )
    print(f"         {'kernel':<64}{'a step':>8}{'ms a step':>11}{'mean us':>9}")
    for kind, (count, total) in sorted(groups.items(), key=lambda item: -item[1][1])[:rows]:
        print(
            f"         {kind[:63]:<64}{count // TRACED_STEPS:>8}"
            f"{total / TRACED_STEPS / 1e3:>11.2f}{total / count:>9.1f}"
        )


def torch_kernels(run):
    """(kernel name, microseconds) of every CUDA kernel in `TRACED_STEPS` steps."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        run(TRACED_STEPS)
        torch.cuda.synchronize()
    # Kernels only: an aten op's device time is its kernels' again.
    return [(e.name, e.device_time_total) for e in prof.events() if e.device_type.name == "CUDA"]


def print_torch_kernels(run):
    kernels = torch_kernels(run)
    print(
        f"kernels: {sum(d for _, d in kernels) / TRACED_STEPS / 1e3:.1f} ms a step "
        f"({len(kernels) // TRACED_STEPS} kernels)",
        flush=True,
    )
    print_kernel_table(kernels)


def profile_torch(args):
    model = keras_model(args)
    print(f"fit:     {fit_ms(model, args.batch_size, args.steps):.1f} ms a step", flush=True)
    batch = images(args.batch_size)

    def run(n):
        model.fit(np.repeat(batch, n, axis=0), batch_size=args.batch_size, verbose=0, shuffle=False)

    print_torch_kernels(run)


def profile_diffusers(args):
    import torch
    from bench_vs_diffusers import diffusers_train_step

    step, _ = diffusers_train_step(args.batch_size, "cuda", bf16=True)

    def run(n):
        for _ in range(n):
            step()

    run(3)
    torch.cuda.synchronize()
    start = time.perf_counter()
    run(args.steps)
    torch.cuda.synchronize()
    print(f"wall:    {(time.perf_counter() - start) / args.steps * 1e3:.1f} ms a step", flush=True)
    print_torch_kernels(run)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--diffusers", action="store_true", help="profile diffusers' step instead of ours"
    )
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument(
        "--dropout", type=float, default=None, help="the UNet's dropout (default: the preset's)"
    )
    parser.add_argument(
        "--cuda-graph",
        choices=["auto", "on", "off"],
        default="on",
        help="PyTorch: the training step as one CUDA graph (on: say why where it is not)",
    )
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit(
            "profile_gpu_step.py profiles a CUDA GPU, and torch sees none here; "
            "bench_vs_diffusers.py measures a CPU."
        )
    if args.diffusers:
        profile_diffusers(args)
        return
    import keras

    profilers = {"jax": profile_jax, "torch": profile_torch}
    if keras.backend.backend() not in profilers:
        sys.exit(
            "profile_gpu_step.py profiles KERAS_BACKEND=jax or torch, not "
            f"{keras.backend.backend()}."
        )
    profilers[keras.backend.backend()](args)


if __name__ == "__main__":
    main()
