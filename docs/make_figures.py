"""The README's pictures of the shipped model (not a test).

    python docs/make_figures.py [--model saved_models/mnist.keras] [--guidance 3]

docs/mnist_digits.png: one row per digit (10 samples each, DDIM-50, classifier-free guidance W);
docs/mnist_denoising.gif: the reverse chain of one sample of each digit, the last frame held.
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_ddpm import load_model  # noqa: E402
from keras_ddpm import sampling_modes  # noqa: E402
from keras_ddpm.images import make_grid  # noqa: E402
from keras_ddpm.images import save_gif  # noqa: E402
from keras_ddpm.images import save_image  # noqa: E402

DOCS = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.path.join(os.path.dirname(DOCS), "saved_models", "mnist.keras"))
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = load_model(args.model)
    labels = np.repeat(np.arange(10), 10)  # row k: digit k
    images = model.generate(len(labels), sampler="ddim", steps=50, seed=args.seed, class_labels=labels, guidance=args.guidance)
    save_image(make_grid(images, ncols=10, padding=2), os.path.join(DOCS, "mnist_digits.png"))
    frames = sampling_modes.denoising_process(model, 10, 25, seed=args.seed, class_labels=np.arange(10), guidance=args.guidance)
    save_gif(np.stack([make_grid(frame, ncols=10, padding=2) for frame in frames]), os.path.join(DOCS, "mnist_denoising.gif"))
    print(f"wrote {os.path.join(DOCS, 'mnist_digits.png')} and {os.path.join(DOCS, 'mnist_denoising.gif')} ({len(frames)} frames)")


if __name__ == "__main__":
    main()
