"""How good is the shipped class-conditional MNIST model? Measured with a digit classifier (not a
test).

    python bench/bench_mnist_quality.py [--model saved_models/mnist.keras] [--per-class 50] \
        [--out bench/bench_mnist_quality.json]

1. A small CNN is trained on the 500 real digits of `mnist_5k:test`, which the diffusion model
   never saw (it trained on `mnist_5k:train`), and scored on the 4,500 `mnist_5k:train` digits,
   which the classifier never saw: its accuracy on real digits is the ceiling for samples.
2. Guided samples: `--per-class` samples of each digit with DDIM-50 at guidance W = 0, 1, 3;
   the classifier's accuracy on them says whether the model draws the digit it is asked for
   (skipped for an unconditional model).
3. Unconditional samples (the null label): the spread of predicted classes (a healthy model draws
   every digit, none above 20%).
4. A Frechet distance in the classifier's 128-d penultimate features between samples and the 500
   held-out real digits, beside the real-vs-real floor (500 random real training digits against
   the same 500; the training split is ordered by class, so they must be drawn at random).

Prints a table and writes `--out` (default bench/bench_mnist_quality.json, the shipped model's).
"""

import argparse
import json
import os
import time

import keras
import numpy as np

from keras_ddpm import data
from keras_ddpm import fid
from keras_ddpm import load_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDANCE = (0.0, 1.0, 3.0)


def to_classifier_input(images):
    """uint8 (N, 28 or 32, ., 1) -> float32 (N, 32, 32, 1) in [0, 1], digits padded like the
    data pipeline."""
    images = np.asarray(images)
    if images.shape[1] == 28:
        images = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)])
    return images.astype("float32") / 255.0


def build_classifier():
    inputs = keras.Input((32, 32, 1))
    x = keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant")(inputs)
    x = keras.layers.RandomRotation(0.03, fill_mode="constant")(x)
    for filters in (32, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dropout(0.3)(x)
    features = keras.layers.Dense(128, activation="relu", name="features")(x)
    outputs = keras.layers.Dense(10, activation="softmax")(keras.layers.Dropout(0.3)(features))
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model, keras.Model(inputs, features)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=os.path.join(REPO, "saved_models", "mnist.keras"))
    parser.add_argument(
        "--per-class", type=int, default=50, help="guided samples of each digit at each W"
    )
    parser.add_argument("--unconditional", type=int, default=500, help="unconditional samples")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps")
    parser.add_argument("--epochs", type=int, default=60, help="classifier epochs")
    parser.add_argument("--batch-size", type=int, default=100, help="sampling batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out",
        default=os.path.join(REPO, "bench", "bench_mnist_quality.json"),
        help="where the results go (JSON)",
    )
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)

    held_out_images, held_out_labels = data.load_mnist_5k("test")
    seen_images, seen_labels = data.load_mnist_5k("train")
    held_out, seen = to_classifier_input(held_out_images), to_classifier_input(seen_images)
    classifier, features = build_classifier()
    start = time.perf_counter()
    classifier.fit(held_out, held_out_labels, batch_size=32, epochs=args.epochs, verbose=0)
    real_accuracy = float(np.mean(classifier.predict(seen, verbose=0).argmax(-1) == seen_labels))
    print(
        f"classifier: trained on {len(held_out)} held-out digits in "
        f"{time.perf_counter() - start:.0f} s; accuracy on the {len(seen)} real training digits "
        f"{100 * real_accuracy:.1f}%",
        flush=True,
    )

    model = load_model(args.model)
    held_out_features = features.predict(held_out, verbose=0)

    def sample(count, labels, guidance, seed):
        batches = []
        for i, first in enumerate(range(0, count, args.batch_size)):
            batch_labels = None if labels is None else labels[first : first + args.batch_size]
            n = min(args.batch_size, count - first)
            batches.append(
                model.generate(
                    n,
                    sampler="ddim",
                    steps=args.steps,
                    seed=seed + i,
                    class_labels=batch_labels,
                    guidance=guidance,
                )
            )
        return to_classifier_input(np.concatenate(batches))

    def frechet(images):
        return float(
            fid.frechet_distance_from_features(
                features.predict(images, verbose=0), held_out_features
            )
        )

    results = {
        "model": os.path.relpath(args.model, REPO),
        "backend": keras.backend.backend(),
        "args": vars(args),
        "classifier_real_accuracy": real_accuracy,
        "guided": [],
        "fd_floor_real_vs_real": frechet(
            seen[np.random.default_rng(args.seed).choice(len(seen), 500, replace=False)]
        ),
    }
    labels = np.repeat(np.arange(10), args.per_class)
    for guidance in GUIDANCE if model.num_classes else ():
        start = time.perf_counter()
        images = sample(len(labels), labels, guidance, args.seed + 1000)
        predicted = classifier.predict(images, verbose=0).argmax(-1)
        per_class = [float(np.mean(predicted[labels == k] == k)) for k in range(10)]
        row = {
            "guidance": guidance,
            "accuracy": float(np.mean(predicted == labels)),
            "per_class_accuracy": per_class,
            "fd": frechet(images),
            "samples": len(labels),
            "seconds": time.perf_counter() - start,
        }
        results["guided"].append(row)
        print(
            f"W={guidance:g}: accuracy {100 * row['accuracy']:.1f}% (worst digit "
            f"{int(np.argmin(per_class))}: {100 * min(per_class):.0f}%), FD {row['fd']:.2f}, "
            f"{row['seconds']:.0f} s",
            flush=True,
        )
    start = time.perf_counter()
    images = sample(args.unconditional, None, 0.0, args.seed + 2000)
    counts = np.bincount(classifier.predict(images, verbose=0).argmax(-1), minlength=10)
    results["unconditional"] = {
        "samples": args.unconditional,
        "class_fractions": (counts / counts.sum()).tolist(),
        "fd": frechet(images),
        "seconds": time.perf_counter() - start,
    }

    print(
        f"\nmodel {results['model']}, backend {results['backend']}, DDIM-{args.steps}; classifier "
        f"accuracy on real digits {100 * real_accuracy:.1f}%"
    )
    print(f"{'samples':<22}{'n':>6}{'accuracy':>10}{'FD':>8}")
    for row in results["guided"]:
        print(
            f"{'guided W=' + format(row['guidance'], 'g'):<22}{row['samples']:>6}"
            f"{100 * row['accuracy']:>9.1f}%{row['fd']:>8.2f}"
        )
    print(
        f"{'unconditional':<22}{args.unconditional:>6}{'':>10}{results['unconditional']['fd']:>8.2f}"
    )
    print(f"{'real vs real (floor)':<22}{500:>6}{'':>10}{results['fd_floor_real_vs_real']:>8.2f}")
    fractions = results["unconditional"]["class_fractions"]
    print(
        "unconditional class spread: "
        + ", ".join(f"{k}: {100 * f:.0f}%" for k, f in enumerate(fractions))
    )
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
