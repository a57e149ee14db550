"""The README's pictures of the shipped model (not a test).

    python docs/make_figures.py [--model saved_models/mnist.keras] [--guidance 3] [--app]

docs/mnist_digits.png: one row per digit (10 samples each, DDIM-50, classifier-free guidance W);
docs/mnist_denoising.gif: the reverse chain of one sample of each digit, the last frame held;
docs/app.png (--app): the sampling app serving saved_models/, after drawing 20 digits (two of each,
DDIM-50, guidance W) in headless Chromium (Debian's `chromium` through `playwright`, as the app's
test drives it).
"""

import argparse
import os
import sys

import numpy as np

from keras_ddpm import load_model
from keras_ddpm import sampling_modes
from keras_ddpm.images import make_grid
from keras_ddpm.images import save_gif
from keras_ddpm.images import save_image

DOCS = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.path.join(os.path.dirname(DOCS), "saved_models", "mnist.keras"))
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--app", action="store_true", help="only write docs/app.png")
    args = parser.parse_args()
    if args.app:
        app_screenshot(args, os.path.join(DOCS, "app.png"))
        return
    model = load_model(args.model)
    labels = np.repeat(np.arange(10), 10)  # row k: digit k
    images = model.generate(len(labels), sampler="ddim", steps=50, seed=args.seed, class_labels=labels, guidance=args.guidance)
    save_image(make_grid(images, ncols=10, padding=2), os.path.join(DOCS, "mnist_digits.png"))
    frames = sampling_modes.denoising_process(model, 10, 25, seed=args.seed, class_labels=np.arange(10), guidance=args.guidance)
    save_gif(np.stack([make_grid(frame, ncols=10, padding=2) for frame in frames]), os.path.join(DOCS, "mnist_denoising.gif"))
    print(f"wrote {os.path.join(DOCS, 'mnist_digits.png')} and {os.path.join(DOCS, 'mnist_denoising.gif')} ({len(frames)} frames)")


def app_screenshot(args, path, chromium="/usr/bin/chromium"):
    import socket

    from playwright import sync_api

    from apps import sample_app

    if not os.path.exists(chromium):
        sys.exit(f"--app needs Debian's chromium at {chromium} (`apt-get install chromium`).")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo, url = sample_app.main(["--port", str(port)], block=False)  # serves saved_models/
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            for name, value in (("num_images", 20), ("guidance", args.guidance), ("seed", args.seed)):
                page.locator(f"#{name} input").fill(str(value))
                page.locator(f"#{name} input").blur()
            page.locator("#generate").click()
            page.wait_for_function("() => { const i = document.querySelector('#grid img'); return i && i.complete && i.naturalWidth > 0; }",
                                   timeout=300_000)
            page.locator('#grid [data-testid="status-tracker"].hide').wait_for(state="attached")
            page.screenshot(path=path, full_page=True)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
