"""Converted checkpoints kept as `.keras` files, so `--model google/ddpm-cifar10-32` (or a
diffusers folder, or any checkpoint `keras_ddpm.convert` reads) converts once.

A file is keyed by the paths, sizes and modification times of the files it was converted from,
the weights chosen and the image size; a new download (a new Hub revision) or an edited file
converts again. The folder is $KERAS_DDPM_CONVERTED, else ~/.cache/keras_ddpm/converted.
"""

import hashlib
import json
import os
import re

CACHE_VERSION = 1  # raise when a conversion's result changes


def default_cache_dir():
    return os.environ.get(
        "KERAS_DDPM_CONVERTED",
        os.path.join(os.path.expanduser("~"), ".cache", "keras_ddpm", "converted"),
    )


def _input_files(source, kind):
    from keras_ddpm.convert import diffusers
    from keras_ddpm.convert import hub
    from keras_ddpm.convert import tf_checkpoint

    if kind == "hub":
        return diffusers.input_files(hub.download(source))
    if kind == "diffusers":
        folder = source if os.path.isdir(source) else os.path.dirname(os.path.abspath(source))
        return diffusers.input_files(folder)
    if kind == "tf_checkpoint":
        return tf_checkpoint.input_files(tf_checkpoint.find_prefix(source))
    return [source]


def converted_model_path(source, weights="ema", image_size=None, cache_dir=None):
    """The `.keras` file of `source` converted (`keras_ddpm.convert.convert`), from the cache, or
    converted now and written there (atomically)."""
    from keras_ddpm.checkpoints import write_atomically
    from keras_ddpm.convert import convert
    from keras_ddpm.convert import detect_format

    source = os.fspath(source)
    kind = detect_format(source)
    if kind is None:
        return convert(source, weights, image_size)  # raises the sentence that says why
    fingerprint = []
    for path in _input_files(source, kind):
        info = os.stat(path)
        fingerprint.append([os.path.realpath(path), info.st_size, info.st_mtime_ns])
    key = json.dumps([CACHE_VERSION, kind, fingerprint, weights, image_size])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    slug = re.sub(r"[^\w.-]+", "-", os.path.basename(os.path.normpath(source)))[-40:]
    path = os.path.join(cache_dir or default_cache_dir(), f"{slug}-{weights}-{digest}.keras")
    if not os.path.isfile(path):
        write_atomically(convert(source, weights, image_size), path)
    return path
