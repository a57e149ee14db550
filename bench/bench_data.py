r"""Input-pipeline throughput against what the ddim_celeba64 training step consumes on an H100.

    KERAS_BACKEND=tensorflow python bench/bench_data.py \
        [--images 2000] [--json bench/bench_data.json]

1. Writes `--images` CelebA-like JPEGs (178x218, quality 90, smooth content plus noise, ~8 KB:
   a little more than aligned CelebA's 7.0 KB mean, 1.44 GB / 202,599 files) to a temporary
   folder and times `make_dataset(folder, 64, 3, 128, crop="celeba", horizontal_flip=True)`
   uncached and cached in memory, in images/s on this machine (`--cores N` pins the process
   to N cores first, to measure how decoding scales with cores).
2. Counts the forward FLOPs of the ddim_celeba64 UNet for one 64x64 image with
   `keras_ddpm.flops` (2 x the multiply-adds of every convolution, dense projection and
   attention product). Training costs ~3x the forward pass (backward = 2x forward). An H100
   SXM runs 989 TFLOP/s dense bf16 at peak; assuming `--mfu` of it (40% is good for a conv
   UNet) gives the images/s one training step consumes.
3. Prints the ratio pipeline / consumption (the target is >= 5) and writes everything as JSON.
   The uncached figure is CPU-bound JPEG decoding and grows with cores; the line "16-core
   host" scales the per-core figure linearly to the 16 cores an H100 machine here has (an
   extrapolation, labelled as such; compare `--cores 1` with the default to check it).
"""

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

H100_BF16_DENSE_PEAK = 989e12  # FLOP/s, H100 SXM5 datasheet (without sparsity)
TRAIN_OVER_FORWARD = 3.0
CELEBA_MEAN_JPEG_BYTES = 1_443_490_838 / 202_599  # img_align_celeba.zip / its file count
H100_HOST_CORES = 16


def write_jpegs(folder, count, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows, cols = np.meshgrid(np.linspace(0, 1, 218), np.linspace(0, 1, 178), indexing="ij")
    for i in range(count):
        phase = rng.uniform(0, 2 * np.pi, 3)
        smooth = 127 + 100 * np.sin(6 * rows[..., None] + 4 * cols[..., None] + phase)
        image = np.clip(smooth + rng.normal(0, 4, (218, 178, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(folder, f"{i:06d}.jpg"), quality=90)


def time_pipeline(folder, count, cache, batch_size, batches):
    from keras_ddpm import data

    dataset = data.make_dataset(
        folder, 64, 3, batch_size, crop="celeba", horizontal_flip=True, seed=0, cache=cache
    )
    iterator = iter(dataset)
    warmup = -(-count // batch_size) + 2 if cache else 3  # a cache fills during the first epoch
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--batches", type=int, default=40, help="timed batches per measurement")
    parser.add_argument(
        "--mfu", type=float, default=0.4, help="assumed fraction of the H100's bf16 peak"
    )
    parser.add_argument("--cores", type=int, default=None, help="pin to this many CPU cores")
    parser.add_argument(
        "--json",
        default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_data.json"),
    )
    args = parser.parse_args()
    if args.cores:  # before TensorFlow sizes its thread pools
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    cores = len(os.sched_getaffinity(0))

    from keras_ddpm import build_unet
    from keras_ddpm import get_preset
    from keras_ddpm.flops import unet_forward_flops

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        write_jpegs(folder, args.images)
        jpeg_bytes = np.mean([os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)])
        print(
            f"wrote {args.images} 178x218 JPEGs, {jpeg_bytes / 1024:.1f} KB each on average "
            f"(CelebA: {CELEBA_MEAN_JPEG_BYTES / 1024:.1f} KB), in "
            f"{time.perf_counter() - start:.1f} s"
        )
        uncached = time_pipeline(folder, args.images, None, args.batch_size, args.batches)
        cached = time_pipeline(folder, args.images, "memory", args.batch_size, args.batches)

    config = get_preset("ddim_celeba64").unet
    network = build_unet(config)
    flops = unet_forward_flops(network)
    consumed = args.mfu * H100_BF16_DENSE_PEAK / (TRAIN_OVER_FORWARD * flops)

    rows = [
        ("pipeline, uncached (decode+crop+resize+flip)", f"{uncached:,.0f} images/s"),
        ("pipeline, cached in memory", f"{cached:,.0f} images/s"),
        (
            f"uncached, 16-core host (extrapolated: {H100_HOST_CORES} x per core)",
            f"{uncached / cores * H100_HOST_CORES:,.0f} images/s",
        ),
        ("ddim_celeba64 parameters", f"{network.count_params():,}"),
        ("forward GFLOPs / image (keras_ddpm.flops)", f"{flops / 1e9:.2f}"),
        (
            f"H100 training consumption ({args.mfu:.0%} of 989 TFLOP/s, 3x forward)",
            f"{consumed:,.0f} images/s",
        ),
        ("ratio uncached / consumption (target >= 5)", f"{uncached / consumed:.2f}"),
        ("ratio cached / consumption (target >= 5)", f"{cached / consumed:.2f}"),
        (
            "ratio uncached 16-core host / consumption (extrapolated)",
            f"{uncached / cores * H100_HOST_CORES / consumed:.2f}",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"\nmachine: {cores} CPU cores used, {platform.processor() or platform.machine()}")
    for name, value in rows:
        print(f"{name:<{width}}  {value:>18}")
    results = {
        "cpu_cores": cores,
        "images": args.images,
        "mean_jpeg_bytes": float(jpeg_bytes),
        "batch_size": args.batch_size,
        "image_size": 64,
        "uncached_images_per_s": uncached,
        "cached_images_per_s": cached,
        "forward_flops": int(flops),
        "assumed_mfu": args.mfu,
        "h100_bf16_dense_peak_flops": H100_BF16_DENSE_PEAK,
        "h100_consumed_images_per_s": consumed,
        "ratio_uncached": uncached / consumed,
        "ratio_cached": cached / consumed,
        "uncached_images_per_s_16_cores_extrapolated": uncached / cores * H100_HOST_CORES,
    }
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
