r"""FID features of CIFAR-sized images: images/s of the FID Inception network on this machine.

    KERAS_BACKEND=jax python bench/bench_fid_features.py \
        [--images 10000] [--batch-size 50] [--resize clean] [--json bench/bench_fid_features.json]

Times `fid.FeatureExtractor` (what `eval` and `FIDCallback` run) on `--images` random 32x32 RGB
uint8 images: resizing to 299x299 (`--resize`, on the CPU in NumPy/PIL) and the 2015 TF
Inception graph (`keras_ddpm.inception`) with random weights (the speed does not depend on the
values; no download). The first batch (compilation) is timed apart. Prints the figures and writes
them as JSON; the machine's load average is recorded beside them, since other processes share it.
"""

import argparse
import json
import os
import platform
import time

import numpy as np


def random_weights(model, seed=0):
    """He-normal kernels: realistic activations (zeros would be as fast, but less honest)."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            shape = tuple(layer.kernel.shape)
            kernel = rng.standard_normal(shape) * np.sqrt(2 / np.prod(shape[:3]))
            layer.kernel.assign(kernel.astype("float32"))
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--resize", default="clean", choices=("clean", "pytorch-fid", "tensorflow"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import keras

    from keras_ddpm import backend
    from keras_ddpm import fid
    from keras_ddpm import inception

    backend.configure_xla_cpu()
    model = random_weights(inception.fid_inception_v3())
    scaling = fid.KERAS_SCALING if args.resize == "pytorch-fid" else fid.TF_GRAPH_SCALING
    extractor = fid.FeatureExtractor(
        model, None, inception.INPUT_SIZE, args.batch_size, args.resize, scaling, "inception-2015"
    )
    rng = np.random.default_rng(0)
    first = rng.integers(0, 256, (args.batch_size, 32, 32, 3), dtype=np.uint8)
    start = time.perf_counter()
    extractor(first)  # compiles
    compile_seconds = time.perf_counter() - start

    resize_seconds = network_seconds = 0.0
    done = 0
    start = time.perf_counter()
    while done < args.images:
        count = min(args.batch_size, args.images - done)
        images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        tick = time.perf_counter()
        x = extractor.preprocess(images)
        if count < args.batch_size:
            x = np.concatenate([x, np.zeros((args.batch_size - count, *x.shape[1:]), x.dtype)])
        tock = time.perf_counter()
        features = keras.ops.convert_to_numpy(model.predict_on_batch(x))[:count]
        network_seconds += time.perf_counter() - tock
        resize_seconds += tock - tick
        assert features.shape == (count, inception.FEATURE_DIM) and np.isfinite(features).all()
        done += count
    total = time.perf_counter() - start
    result = {
        "backend": keras.backend.backend(),
        "images": args.images,
        "batch_size": args.batch_size,
        "resize": args.resize,
        "seconds": round(total, 1),
        "images_per_second": round(args.images / total, 2),
        "resize_seconds": round(resize_seconds, 1),
        "network_seconds": round(network_seconds, 1),
        "first_batch_seconds": round(compile_seconds, 1),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
    }
    print(
        f"{args.images} images 32x32 -> 299x299 ({args.resize}), {result['backend']}: "
        f"{total:.1f} s, {result['images_per_second']} images/s (resize {resize_seconds:.1f} s, "
        f"network {network_seconds:.1f} s; first batch {compile_seconds:.1f} s apart); load "
        f"average {result['load_average_after']} on {result['cores']} cores"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
