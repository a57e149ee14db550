"""Seconds to convert DDPM's 256x256 model (114M parameters) from a diffusers folder (not a test).

    python bench/bench_convert.py
    python bench/bench_convert.py --backends torch --folder /tmp/ddpm-256

Writes diffusers' UNet2DModel in google/ddpm-celebahq-256's configuration (128 channels,
multipliers 1, 1, 2, 2, 4, 4, two blocks a level, attention at 16x16, fixed-small DDPMScheduler;
random weights, seeded) with save_pretrained into --folder, once. Then, for each backend, runs
`python cli.py convert FOLDER OUT.keras` as a user would and reports two figures: the command's
wall time (interpreter start and imports included) and the conversion's own time as the command
prints it (reading, building the model, writing the .keras file).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = ("tensorflow", "torch", "jax")


def write_model(folder):
    """The diffusers folder, written unless it is there; returns the parameter count."""
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from fid_testing import import_torchvision  # diffusers imports torchvision where installed

    import_torchvision()
    import diffusers
    import torch

    from keras_ddpm.convert.diffusers import PUBLISHED_UNETS

    if os.path.isfile(os.path.join(folder, "diffusion_pytorch_model.safetensors")):
        with open(os.path.join(folder, "config.json")) as f:
            unet = diffusers.UNet2DModel(**{k: v for k, v in json.load(f).items() if k[0] != "_"})
    else:
        torch.manual_seed(0)
        unet = diffusers.UNet2DModel(**PUBLISHED_UNETS["google/ddpm-celebahq-256"])
        unet.save_pretrained(folder)
        diffusers.DDPMScheduler(variance_type="fixed_small").save_pretrained(folder)
    return sum(p.numel() for p in unet.parameters())


def convert(folder, backend, out):
    from keras_ddpm.backend import child_environment

    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "cli.py", "convert", folder, out],
        cwd=REPO,
        env=child_environment(backend),
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{backend}: {result.stderr.strip().splitlines()[-1]}")
    conversion = float(re.search(r" in ([\d.]+) s:", result.stdout).group(1))
    return {"backend": backend, "command_seconds": wall, "conversion_seconds": conversion}


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--folder", default="/tmp/keras_ddpm_bench_ddpm256")
    parser.add_argument("--out", default="/tmp/keras_ddpm_bench_ddpm256.keras")
    parser.add_argument("--json", default=os.path.join(REPO, "bench", "bench_convert.json"))
    args = parser.parse_args()
    parameters = write_model(args.folder)
    rows = []
    for backend in args.backends.split(","):
        rows.append(convert(args.folder, backend, args.out))
        row = rows[-1]
        print(
            f"{backend}: {row['conversion_seconds']:.1f} s to convert and write, "
            f"{row['command_seconds']:.1f} s for the whole command",
            flush=True,
        )
    record = {
        "model": "diffusers UNet2DModel, google/ddpm-celebahq-256's configuration",
        "parameters": parameters,
        "output_mib": os.path.getsize(args.out) / 2**20,
        "cpu_count": os.cpu_count(),
        "rows": rows,
    }
    with open(args.json, "w") as f:
        json.dump(record, f, indent=2)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
