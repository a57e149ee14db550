r"""Host overhead of a training step on each backend beside diffusers (not a test; issue 24).

    python bench/bench_host_overhead.py
    python bench/bench_host_overhead.py --backends torch --steps 50

The `tiny` preset (16x16, 1 channel, 16 and 32 channels, one residual block a level, attention at
8x8, 4 norm groups) at batch 1, where the arithmetic of a step is negligible and its wall time is
the host's work: Python, Keras and the framework's dispatch. Each backend trains it through
`model.fit` in a process of its own (TensorFlow compiles the step with tf.function, JAX with
jit, PyTorch runs it eagerly); a second process holds diffusers' `UNet2DModel` of the same
configuration, trained with the same work a step (epsilon MSE at uniform t, gradient clipping to
norm 1, torch's Adam, diffusers' `EMAModel`, foreach). After each timed step of ours, the partner
runs one of its own on its own clock (the machine's speed drifts; adjacent steps see the same
machine, `bench_vs_diffusers.py`). Each step is timed from the end of the step before; the
ratio is ours / diffusers' over the summed times of the pairs.

Also counted:
  torch  operator calls a step, by torch.profiler (CPU activity) over `--profile-steps` calls of
         the training step (`model.train_step` on one batch, as `fit` calls it; diffusers' step
         function): "aten" is every aten:: event, nested ones included (an op that calls others
         counts each); "top-level aten" leaves out those called from inside another aten op:
         the operator calls the step's Python makes, each of which launches at least one kernel
         on a GPU. With CUDA, "cuda kernels" counts the device kernel events as well.
  jax    the arrays passed to the compiled train function at each call: the leaves
         (jax.tree_util.tree_leaves) of the state, and of the batch(es). keras_ddpm's own
         train function (`--steps-per-execution N`: N steps a call; `--jax-pack-state yes`: the
         state in one flat buffer per dtype) or, with `--steps-per-execution 1
         --jax-pack-state no`, Keras' own.

Every process computes with `--threads` threads (1 by default, `thread_variables`). Prints a
table and writes bench/bench_host_overhead.json.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # this checkout's keras_ddpm, not another one installed in editable mode

from common import importable_torchvision  # noqa: E402
from common import run_child  # noqa: E402
from common import write_json  # noqa: E402

PARTNER_PREFIX = "partner: "
BACKENDS = ("tensorflow", "torch", "jax")


def diffusers_tiny_unet():
    """diffusers' UNet2DModel with the `tiny` preset's architecture."""
    importable_torchvision()
    from diffusers import UNet2DModel

    from keras_ddpm.convert.diffusers import PUBLISHED_UNETS

    return UNet2DModel(
        **dict(
            PUBLISHED_UNETS["google/ddpm-cifar10-32"],
            sample_size=16,
            in_channels=1,
            out_channels=1,
            layers_per_block=1,
            block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"),  # attention at 8x8
            up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=4,
        )
    )


def diffusers_step(batch_size):
    """diffusers' training step on one random batch (the work of ours, see the docstring)."""
    import torch

    torch.manual_seed(0)
    unet = diffusers_tiny_unet()  # first: diffusers' imports (`importable_torchvision`)
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    unet = unet.to(device)
    unet.train()
    ema = EMAModel(unet.parameters(), decay=0.9, foreach=True)
    optimizer = torch.optim.Adam(unet.parameters(), lr=1e-3)
    scheduler = DDPMScheduler(num_train_timesteps=100, beta_start=1e-3, beta_end=0.2)
    images = torch.rand(batch_size, 1, 16, 16, device=device) * 2 - 1

    def step():
        noise = torch.randn_like(images)
        t = torch.randint(0, 100, (batch_size,), device=device)
        prediction = unet(scheduler.add_noise(images, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(prediction, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        ema.step(unet.parameters())

    step.parameters = sum(p.numel() for p in unet.parameters())
    return step


def synchronize():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def serve_diffusers(args):
    """The partner: after "ready", one diffusers step for each line on stdin, answering its wall
    time in seconds."""
    step = diffusers_step(args.batch_size)
    for _ in range(args.warmup_steps):
        step()
    print(PARTNER_PREFIX + "ready", flush=True)
    for _ in sys.stdin:
        start = time.perf_counter()
        step()
        synchronize()
        print(f"{PARTNER_PREFIX}{time.perf_counter() - start}", flush=True)


class Partner:
    def __init__(self, args):
        argv = [f"--batch-size={args.batch_size}", f"--warmup-steps={args.warmup_steps}"]
        self.process = subprocess.Popen(
            [sys.executable, __file__, *argv, "--child", "diffusers-partner"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "KERAS_BACKEND": "torch"},
        )
        self.answer()
        self.seconds = []

    def answer(self):
        for line in self.process.stdout:
            if line.startswith(PARTNER_PREFIX):
                return line[len(PARTNER_PREFIX) :].strip()
        raise RuntimeError(f"the diffusers partner ended (exit status {self.process.wait()})")

    def step(self):
        self.process.stdin.write("step\n")
        self.process.stdin.flush()
        self.seconds.append(float(self.answer()))

    def close(self):
        self.process.stdin.close()
        self.process.wait()


def profile_counts(step, steps):
    """Operator events a call of `step` (see the docstring), over `steps` calls."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    activities = [ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(ProfilerActivity.CUDA)
    step()
    synchronize()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        synchronize()
    events = prof.events()
    aten = [e for e in events if e.name.startswith("aten::")]

    def nested(event):
        parent = event.cpu_parent
        while parent is not None:
            if parent.name.startswith("aten::"):
                return True
            parent = parent.cpu_parent
        return False

    counts = {
        "aten": len(aten) / steps,
        "top_level_aten": sum(not nested(e) for e in aten) / steps,
    }
    if torch.cuda.is_available():
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        counts["cuda_kernels"] = len(kernels) / steps
    return counts


def measure_keras(args):
    import keras
    import numpy as np

    import keras_ddpm

    backend = keras.backend.backend()
    model = keras_ddpm.DiffusionModel.from_preset("tiny", seed=0)
    if backend == "jax":
        from keras_ddpm.backend import jax as backend_jax

        backend_jax.PACK_STATE = args.jax_pack_state == "yes"
    per_call = args.steps_per_execution
    model.compile(steps_per_execution=per_call)
    images = np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 1)).astype("float32")
    images = np.repeat(images, args.batch_size, axis=0)
    steps = -(-(args.warmup_steps + args.steps) // per_call) * per_call  # whole calls
    row = {"keras_backend": backend, "parameters": model.network.count_params()}
    jax_counts = count_jax_arguments(model) if backend == "jax" else {}
    partner = Partner(args) if args.pair == "yes" else None
    seconds, resumed = [], [None]

    class StepTimer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # waits for the step (JAX dispatches asynchronously)
            if resumed[0] is not None and batch >= args.warmup_steps:
                seconds.extend([(time.perf_counter() - resumed[0]) / per_call] * per_call)
            if partner and batch >= args.warmup_steps:
                partner.step()
            resumed[0] = time.perf_counter()

    model.fit(
        np.repeat(images, steps, axis=0),
        batch_size=args.batch_size,
        epochs=1,
        verbose=0,
        shuffle=False,
        callbacks=[StepTimer()],
    )
    row.update(jax_counts)
    row["ms_per_step"] = 1e3 * statistics.mean(seconds)
    row["ms_per_step_median"] = 1e3 * statistics.median(seconds)
    if partner:
        partner.close()
        row["paired_diffusers_ms_per_step"] = 1e3 * statistics.mean(partner.seconds)
        row["paired_diffusers_ms_per_step_median"] = 1e3 * statistics.median(partner.seconds)
        row["vs_diffusers"] = sum(seconds) / sum(partner.seconds)
    if backend == "torch":
        import torch

        batch = (torch.as_tensor(images, device=model.optimizer.iterations.value.device),)
        row["ours_ops_per_step"] = profile_counts(
            lambda: model.train_step(batch), args.profile_steps
        )
        theirs = diffusers_step(args.batch_size)
        row["diffusers_parameters"] = theirs.parameters
        row["diffusers_ops_per_step"] = profile_counts(theirs, args.profile_steps)
    return row


def count_jax_arguments(model):
    """Wraps the JAX train function (`fit` calls `train_function(state, iterator)`; Keras' own,
    keras/src/backend/jax/trainer.py, calls the jitted step on `state` and the next batch;
    keras_ddpm's calls `train_function.compiled(state, batches)`) so that its first call records
    how many arrays the state holds and how many the call passes; filled in during `fit`."""
    import jax

    counts = {}
    model.make_train_function()
    compiled = model.train_function
    own = getattr(compiled, "compiled", None)  # keras_ddpm's: the jitted function it runs
    if own is not None:

        def own_counting(state, batches):
            if not counts:
                counts["jax_state_arrays_per_call"] = len(jax.tree_util.tree_leaves(state))
                counts["jax_arrays_per_call"] = len(jax.tree_util.tree_leaves((state, batches)))
            return own(state, batches)

        compiled.compiled = own_counting
        return counts

    def counting(state, iterator):
        if not counts:
            data = next(iterator)
            counts["jax_state_arrays_per_call"] = len(jax.tree_util.tree_leaves(state))
            counts["jax_arrays_per_call"] = len(jax.tree_util.tree_leaves((state, data)))
            iterator = iter([data])
        return compiled(state, iterator)

    model.train_function = counting
    return counts


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--warmup-steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40, help="timed training steps")
    parser.add_argument("--profile-steps", type=int, default=5)
    parser.add_argument("--pair", choices=["yes", "no"], default="yes")
    parser.add_argument("--steps-per-execution", type=int, default=1, help="steps a fit call")
    parser.add_argument("--jax-pack-state", choices=["yes", "no"], default="no")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="compute threads a process (torch, TensorFlow, XLA); 0: each library's default",
    )
    parser.add_argument("--output", default="bench_host_overhead.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "diffusers-partner":
        serve_diffusers(args)
        return
    if args.child:
        print(json.dumps(measure_keras(args)))
        return
    if args.threads:
        os.environ.update(thread_variables(args.threads))
    argv = [
        f"--{key.replace('_', '-')}={value}"
        for key, value in vars(args).items()
        if key not in ("child", "backends", "output")
    ]
    rows = {}
    for backend in args.backends.split(","):
        row = run_child(__file__, argv + ["--child", backend], backend, backend)
        if row is not None:
            rows[backend] = row
    report(args, rows)


def thread_variables(threads):
    """Environment variables that give each child process (and the partner) `threads` compute
    threads. At batch 1 the arithmetic is negligible, and on a shared 2-core machine the default
    pools oversubscribe the cores: their threads keep spinning after each op, on the core the
    partner's step needs."""
    n = str(threads)
    return {
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "TF_NUM_INTRAOP_THREADS": n,
        "TF_NUM_INTEROP_THREADS": n,
        "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
        f"intra_op_parallelism_threads={n}",
    }


def report(args, rows):
    threads = args.threads or "default"
    print(
        f"\ntiny preset, batch {args.batch_size}, {args.steps} timed fit steps (ms a step), "
        f"{threads} compute thread(s) a process"
    )
    print(f"{'':<12}{'ours':>9}{'diffusers':>11}{'ours/diffusers':>16}")
    for name, row in rows.items():
        theirs = row.get("paired_diffusers_ms_per_step")
        ratio = row.get("vs_diffusers")
        print(
            f"{name:<12}{row['ms_per_step']:>9.2f}"
            + (f"{theirs:>11.2f}{ratio:>15.2f}x" if theirs else "")
        )
    torch_row = rows.get("torch")
    if torch_row:
        print("torch operator events a step (torch.profiler):")
        for who in ("ours", "diffusers"):
            counts = torch_row[f"{who}_ops_per_step"]
            print(f"  {who:<10}" + ", ".join(f"{k} {v:.0f}" for k, v in counts.items()))
    jax_row = rows.get("jax")
    if jax_row and "jax_state_arrays_per_call" in jax_row:
        print(
            f"jax: {jax_row['jax_arrays_per_call']} arrays ({jax_row['jax_state_arrays_per_call']} "
            f"of state) passed to the compiled train function at each call of "
            f"{args.steps_per_execution} step(s)"
        )
    write_json(args.output, args, rows)


if __name__ == "__main__":
    main()
