"""FID and KID on Inception pool features, with cached reference statistics.

Notation (Heusel et al. 2017, "GANs trained by a two time-scale update rule", eq. 6):
    FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))
on the 2048-d average-pool features of an InceptionV3 at 299x299. KID (Binkowski et al. 2018,
"Demystifying MMD GANs", eq. 4) is the unbiased MMD^2 estimate with the polynomial kernel
k(x, y) = (x.y / d + 1)^3, averaged over random subsets.

Two feature networks (`FEATURES`):
- "inception-2015": the 2015 TensorFlow Inception graph of the published FIDs
  (`keras_ddpm.inception`, pytorch-fid's weights);
- "keras-imagenet": Keras' ImageNet InceptionV3: comparable between runs, not with the papers.

Three preprocessing conventions (`RESIZES`), each a resize of uint8 images to 299x299 and the
scaling of their pixels to Inception's [-1, 1]:
- "clean" (clean-fid, Parmar et al. 2022): PIL's bicubic filter on float32 channels
  (antialiased when shrinking), then (x - 128) / 128 as clean-fid feeds the 2015 graph;
- "pytorch-fid": bilinear interpolation of float tensors without antialiasing
  (`F.interpolate(align_corners=False)`), then 2 x / 255 - 1;
- "tensorflow": TensorFlow 1's `ResizeBilinear` inside the 2015 graph (no half-pixel offset,
  as the original TTUR code runs it), then (x - 128) / 128.
Keras' ImageNet network always takes x / 127.5 - 1. Grayscale is repeated to RGB.
"""

import dataclasses
import hashlib
import json
import os

import h5py
import keras
import numpy as np
from PIL import Image

from keras_ddpm.data.image_files import list_images
from keras_ddpm.data.image_files import read_image
from keras_ddpm.evaluation import FEATURES
from keras_ddpm.evaluation import RESIZES

INCEPTION_WEIGHTS_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/inception_v3/"
    "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
)
INCEPTION_INPUT_SIZE = 299
FEATURES_VERSION = 2  # bump when preprocessing changes; it is part of every cache key
# Pixel value -> (value - center) / scale, Inception's input range.
KERAS_SCALING = (127.5, 127.5)  # Keras' InceptionV3; also pytorch-fid's 2 (x / 255) - 1
TF_GRAPH_SCALING = (128.0, 128.0)  # the 2015 graph's Sub and Mul nodes, clean-fid's scaling
NOTES = {
    ("inception-2015", "clean"): "the 2015 TF Inception with clean-fid's resizing: comparable "
    "with clean-fid's 'clean' numbers and statistics, not exactly with TF-FID papers",
    ("inception-2015", "pytorch-fid"): "the 2015 TF Inception with pytorch-fid's resizing: "
    "comparable with pytorch-fid's numbers and statistics, close to but not exactly TF-FID papers",
    ("inception-2015", "tensorflow"): "the 2015 TF Inception with TF1's in-graph bilinear resize: "
    "the protocol of TF-FID papers (TTUR code; clean-fid's legacy_tensorflow)",
}
NOTE = (
    "Keras ImageNet InceptionV3 weights: comparable between runs, not equal to the papers' "
    "TF-Inception FIDs"
)


def note(features, resize):
    """Which published numbers an FID from these settings compares with (one phrase)."""
    if features == "keras-imagenet":
        return NOTE
    return NOTES.get((features, resize), f"{features} features: comparable between runs only")


# Features.


def resize_images(images, size, method="clean"):
    """uint8 (N, H, W, C) -> float32 (N, size, size, C) in [0, 255] by one of `RESIZES`.

    "clean": each channel is resized as a float32 PIL image with the bicubic filter, whose
    support widens when shrinking (antialiasing), then clipped to [0, 255] (clean-fid).
    "pytorch-fid" and "tensorflow": bilinear interpolation, separable, without antialiasing
    (`interpolation_matrix`).
    """
    if method not in RESIZES:
        raise ValueError(f"resize must be one of {', '.join(RESIZES)}. Received: {method!r}")
    images = np.asarray(images)
    if images.shape[1:3] == (size, size):
        return images.astype(np.float32)
    if method != "clean":
        rows = interpolation_matrix(images.shape[1], size, method)
        columns = interpolation_matrix(images.shape[2], size, method)
        channels_first = images.astype(np.float32).transpose(0, 3, 1, 2)  # (N, C, H, W)
        out = (rows @ channels_first @ columns.T).transpose(0, 2, 3, 1)
        return np.clip(out, 0, 255)  # convex weights: only round-off leaves [0, 255]
    out = np.empty((len(images), size, size, images.shape[-1]), np.float32)
    for i, image in enumerate(images):
        for c in range(images.shape[-1]):
            channel = Image.fromarray(image[..., c].astype(np.float32), mode="F")
            out[i, ..., c] = np.asarray(channel.resize((size, size), resample=Image.BICUBIC))
    return np.clip(out, 0, 255)


def interpolation_matrix(in_size, out_size, method):
    """(out_size, in_size) float32 weights of 1-d linear interpolation.

    Output pixel i samples the input at
      "pytorch-fid": (i + 0.5) * in / out - 0.5, clamped at 0 (half-pixel centres,
        `F.interpolate(mode="bilinear", align_corners=False)`);
      "tensorflow": i * in / out (TF1 `resize_bilinear`, align_corners=False,
        half_pixel_centers=False),
    between its two nearest input pixels, the upper one clamped at the edge.
    """
    scale = in_size / out_size
    positions = np.arange(out_size, dtype=np.float64) * scale
    if method == "pytorch-fid":
        positions = np.maximum(positions + 0.5 * scale - 0.5, 0.0)
    lower = np.minimum(np.floor(positions).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    fraction = positions - lower
    weights = np.zeros((out_size, in_size), np.float64)
    np.add.at(weights, (np.arange(out_size), lower), 1.0 - fraction)
    np.add.at(weights, (np.arange(out_size), upper), fraction)
    return weights.astype(np.float32)


class FeatureExtractor:
    """Maps uint8 images (N, H, W, 1 or 3) to float32 features (N, D) with a Keras model.

    Args:
        model: a Keras model from (batch, input_size, input_size, 3) in [-1, 1] to (batch, D).
        name: identifies the weights in cache keys; None disables caching (random weights).
        input_size: the side images are resized to.
        batch_size: images per forward pass; the last batch is padded so the compiled
            function sees one shape.
        resize: one of `RESIZES`.
        scaling: (center, scale): a resized pixel value x enters as (x - center) / scale.
        features: the network's name in records and cache keys (one of `FEATURES`, or any
            name for another network).
    """

    def __init__(
        self,
        model,
        name,
        input_size=INCEPTION_INPUT_SIZE,
        batch_size=50,
        resize="clean",
        scaling=KERAS_SCALING,
        features="custom",
    ):
        if resize not in RESIZES:
            raise ValueError(f"resize must be one of {', '.join(RESIZES)}. Received: {resize!r}")
        self.model = model
        self.name = name
        self.input_size = input_size
        self.batch_size = batch_size
        self.resize = resize
        self.scaling = scaling
        self.features = features

    def preprocess(self, images):
        """uint8 (N, H, W, C) -> float32 (N, size, size, 3), resized and scaled to Inception's
        [-1, 1]."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
            raise ValueError(
                f"Expected uint8 images shaped (N, H, W, 1 or 3). Received: {images.dtype} "
                f"{images.shape}"
            )
        x = resize_images(images, self.input_size, self.resize)
        if x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        center, scale = self.scaling
        return (x - np.float32(center)) / np.float32(scale)

    def __call__(self, images):
        features = []
        for start in range(0, len(images), self.batch_size):
            x = self.preprocess(images[start : start + self.batch_size])
            count = len(x)
            if count < self.batch_size:
                x = np.concatenate([x, np.zeros((self.batch_size - count, *x.shape[1:]), x.dtype)])
            features.append(keras.ops.convert_to_numpy(self.model.predict_on_batch(x))[:count])
        return np.concatenate(features).astype(np.float32)

    def describe(self):
        """What the features depend on, for records and cache keys."""
        return {"features": self.features, "resize": self.resize, "weights": self.name}


def feature_extractor(features="inception-2015", weights=None, resize="clean", batch_size=50):
    """The FID feature extractor: one of `FEATURES` with one of `RESIZES`.

    `weights`: None for the network's published weights (downloaded into Keras' cache on first
    use: pytorch-fid's file for "inception-2015", "imagenet" for "keras-imagenet"), or the path
    of a local weights file (pytorch-fid's `.pth` or a `.weights.h5` of the FID network; Keras'
    notop `.h5` or a `.weights.h5` for Keras' network).
    """
    if features not in FEATURES:
        raise ValueError(f"features must be one of {', '.join(FEATURES)}. Received: {features!r}")
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {', '.join(RESIZES)}. Received: {resize!r}")
    if features == "keras-imagenet":
        return inception_v3("imagenet" if weights is None else weights, batch_size, resize)
    if weights == "imagenet":
        raise ValueError(
            "--inception-weights imagenet names Keras' ImageNet InceptionV3, which --features "
            "keras-imagenet uses; leave --inception-weights out for the 2015 graph's weights."
        )
    return fid_inception(weights, resize, batch_size)


def fid_inception(weights=None, resize="clean", batch_size=50):
    """The 2015 TF Inception graph's features (`keras_ddpm.inception`): pytorch-fid's published
    weights (None: downloaded and checked) or a local file."""
    from keras_ddpm import inception

    # The file first: a missing one fails before the network is built.
    path = inception.download_weights() if weights is None else inception.weights_file(weights)
    model = inception.load_weights(inception.fid_inception_v3(), path)
    name = inception.WEIGHTS_NAME if weights is None else weights_name(path)
    scaling = KERAS_SCALING if resize == "pytorch-fid" else TF_GRAPH_SCALING
    return FeatureExtractor(
        model, name, inception.INPUT_SIZE, batch_size, resize, scaling, "inception-2015"
    )


def weights_name(weights):
    """Cache-key name of a weights choice: 'imagenet', a file's content hash, or None (random)."""
    if weights is None or weights == "imagenet":
        return weights
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "file-" + digest.hexdigest()[:16]


def inception_v3(weights="imagenet", batch_size=50, resize="clean"):
    """Keras' ImageNet InceptionV3 features ("keras-imagenet"): no top, 2048-d average pool.

    `weights`: "imagenet" (Keras downloads and caches the file), the path of a local weights
    file (the Keras notop .h5 or a `.weights.h5`), or None for random weights (tests).
    """
    if weights not in ("imagenet", None):
        weights = os.fspath(weights)
        if not os.path.isfile(weights):
            raise FileNotFoundError(
                f"No Inception weights file at {weights}; download {INCEPTION_WEIGHTS_URL} and "
                "pass its path with --inception-weights."
            )
        if not h5py.is_hdf5(weights):  # before building the 23M-parameter network
            raise ValueError(f"Could not load Inception weights from {weights} (not an HDF5 file).")
    try:
        model = keras.applications.InceptionV3(
            include_top=False,
            weights=weights,
            input_shape=(INCEPTION_INPUT_SIZE, INCEPTION_INPUT_SIZE, 3),
            pooling="avg",
        )
    except Exception as error:  # download and HDF5 errors come in many kinds
        if weights == "imagenet":
            raise ValueError(
                "Could not download Keras' InceptionV3 ImageNet weights (offline?): fetch "
                f"{INCEPTION_WEIGHTS_URL} "
                "where there is internet and pass the file with --inception-weights PATH (or put "
                "it in ~/.keras/models/)."
            ) from None
        raise ValueError(
            f"Could not load Inception weights from {weights} ({type(error).__name__}: {error})."
        ) from None
    return FeatureExtractor(
        model,
        weights_name(weights),
        INCEPTION_INPUT_SIZE,
        batch_size,
        resize,
        KERAS_SCALING,
        "keras-imagenet",
    )


# Statistics.


class FeatureStatistics:
    """Streaming mean and covariance of features, plus a bounded random subset for KID.

    Sums are kept in float64 around a shift (the first batch's mean), so the covariance
    does not lose precision to large means. At most `max_kid_features` rows are kept,
    chosen uniformly at random (reservoir sampling) once more arrive. `num_images` counts the
    rows; statistics loaded from a file that does not say (pytorch-fid's) have None.
    """

    def __init__(self, max_kid_features=10_000, seed=0):
        self.max_kid_features = max_kid_features
        self.rng = np.random.default_rng(seed)
        self.num_images = 0
        self.count = 0  # rows in the sums (a stand-in for loaded statistics)
        self.shift = self.sum = self.outer = None
        self.kid_features = []
        self.key = None  # set by `load`

    def update(self, features):
        features = np.asarray(features, dtype=np.float64)
        if self.shift is None:
            self.shift = features.mean(axis=0)
            self.sum = np.zeros_like(self.shift)
            self.outer = np.zeros((len(self.shift),) * 2)
        centred = features - self.shift
        self.sum += centred.sum(axis=0)
        self.outer += centred.T @ centred
        for row in features.astype(np.float32):  # reservoir sampling (Vitter's algorithm R)
            if len(self.kid_features) < self.max_kid_features:
                self.kid_features.append(row)
            else:
                slot = self.rng.integers(0, self.count + 1)
                if slot < self.max_kid_features:
                    self.kid_features[slot] = row
            self.count += 1
            self.num_images += 1
        return self

    @property
    def mean(self):
        return self.shift + self.sum / self.count

    @property
    def covariance(self):
        if self.count < 2:
            raise ValueError(f"A covariance needs at least 2 images. Received: {self.count}")
        centred_mean = self.sum / self.count
        return (self.outer - self.count * np.outer(centred_mean, centred_mean)) / (self.count - 1)

    @property
    def features(self):
        """The rows kept for KID, (K, D); K is 0 for statistics loaded without them."""
        if not self.kid_features:
            return np.zeros((0, 0 if self.shift is None else len(self.shift)), np.float32)
        return np.stack(self.kid_features)

    def save(self, path, key=None):
        """Writes the statistics to `path` (.npz, no pickles), atomically, in pytorch-fid's and
        clean-fid's format (`mu`, `sigma`: they read it as it is) plus `features` (the KID
        rows, when kept), `num_images` and `key` (JSON: what the features depend on)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp.npz"
        arrays = {"mu": self.mean, "sigma": self.covariance}
        if self.kid_features:
            arrays["features"] = self.features
        np.savez(
            temporary,
            **arrays,
            num_images=np.int64(self.num_images),
            key=np.str_(json.dumps(key or {}, sort_keys=True)),
        )
        os.replace(temporary, path)

    @classmethod
    def load(cls, path):
        """Statistics from an .npz with `mu` and `sigma` (written by `save`, pytorch-fid's
        `--save-stats` or clean-fid), read without pickles. Files without `features` (KID rows)
        give statistics without them; without `num_images`, `num_images` is None."""
        with np.load(path, allow_pickle=False) as f:
            if "mu" not in f.files or "sigma" not in f.files:
                raise ValueError(
                    f"{path} holds no FID statistics: expected arrays mu and sigma (pytorch-fid's "
                    f"and clean-fid's .npz). Received: {', '.join(f.files) or 'nothing'}"
                )
            mean, covariance = f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
            if mean.ndim != 1 or covariance.shape != mean.shape * 2:
                raise ValueError(
                    f"{path} holds statistics of mismatched shapes. Received: mu {mean.shape}, "
                    f"sigma {covariance.shape}"
                )
            features = f["features"] if "features" in f.files else np.zeros((0, len(mean)))
            num_images = int(f["num_images"]) if "num_images" in f.files else None
            key = json.loads(str(f["key"])) if "key" in f.files else None
        stats = cls(max_kid_features=max(len(features), 1))
        stats.num_images = num_images
        # Zero sums around the mean: any count >= 2 gives back mu and sigma exactly.
        stats.count = num_images if num_images and num_images > 1 else 2
        stats.shift, stats.sum = mean, np.zeros_like(mean)
        stats.outer = covariance * (stats.count - 1)
        stats.kid_features = list(features.astype(np.float32))
        stats.key = key
        return stats


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) in float64.

    The matrix square root (scipy's Schur method) of a near-singular product can be
    non-finite or slightly complex: then eps is added to both diagonals (pytorch-fid's
    retry) and the real part taken; a clearly complex root falls back to the symmetric form
    Tr((S1^(1/2) S2 S1^(1/2))^(1/2)), which has the same trace.
    """
    from scipy import linalg

    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, np.float64)),
        np.atleast_1d(np.asarray(mu2, np.float64)),
    )
    sigma1, sigma2 = (
        np.atleast_2d(np.asarray(sigma1, np.float64)),
        np.atleast_2d(np.asarray(sigma2, np.float64)),
    )
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"Statistics do not match. Received: means {mu1.shape}, {mu2.shape}; covariances "
            f"{sigma1.shape}, {sigma2.shape}"
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if np.isfinite(covmean).all() and np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            covmean = covmean.real
        else:
            return float(
                diff @ diff
                + np.trace(sigma1)
                + np.trace(sigma2)
                - 2 * _trace_sqrt_product(sigma1, sigma2)
            )
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _trace_sqrt_product(sigma1, sigma2):
    """Tr((S1 S2)^(1/2)) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))), for symmetric PSD S1, S2."""
    values, vectors = np.linalg.eigh(sigma1)
    root1 = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    return float(np.sqrt(np.clip(np.linalg.eigvalsh(root1 @ sigma2 @ root1), 0, None)).sum())


def frechet_distance_from_features(features1, features2):
    """The same distance from the features themselves, exact when covariances are singular.

    With A, B the centred features over sqrt(n - 1), S1 = A^T A and S2 = B^T B, the non-zero
    eigenvalues of S1 S2 are the squared singular values of A B^T, so
    Tr((S1 S2)^(1/2)) = ||A B^T||_* (nuclear norm): no d x d square root at all. Cheap and
    exact when either set has fewer images than feature dimensions.
    """
    x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if x.ndim != 2 or x.shape[1:] != y.shape[1:] or min(len(x), len(y)) < 2:
        raise ValueError(
            f"Expected two (N >= 2, D) feature arrays. Received: {x.shape} and {y.shape}"
        )
    diff = x.mean(axis=0) - y.mean(axis=0)
    a = (x - x.mean(axis=0)) / np.sqrt(len(x) - 1)
    b = (y - y.mean(axis=0)) / np.sqrt(len(y) - 1)
    trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    return float(diff @ diff + np.sum(a * a) + np.sum(b * b) - 2 * trace_sqrt)


def kernel_inception_distance(
    features1, features2, num_subsets=100, subset_size=1000, degree=3, gamma=None, coef0=1.0, seed=0
):
    """KID: mean and standard deviation of the unbiased MMD^2 over random subsets.

    Kernel k(x, y) = (gamma x.y + coef0)^degree, gamma = 1/d by default. Each subset draws
    `subset_size` rows (without replacement) from each set; the size shrinks to the smaller
    set when it has fewer rows.
    """
    x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise ValueError(
            f"KID needs at least 2 images in each set. Received: {len(x)} and {len(y)}"
        )
    gamma = 1.0 / x.shape[1] if gamma is None else gamma

    def kernel(u, v):
        base = gamma * (u @ v.T) + coef0
        if degree != int(degree) or degree < 1:
            return base**degree
        out = base.copy()
        for _ in range(int(degree) - 1):  # repeated products: several times faster than np.power
            out *= base
        return out

    rng = np.random.default_rng(seed)
    estimates = np.empty(num_subsets)
    for i in range(num_subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
        estimates[i] = (
            (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
            + (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1))
            - 2 * k_ab.sum() / (m * m)
        )
    return float(estimates.mean()), float(estimates.std())


def compare(generated, real, kid_subsets=100, kid_subset_size=1000):
    """FID and KID between two `FeatureStatistics`, with both image counts.

    KID (and its std) is None when a side has no feature rows (statistics read from a
    pytorch-fid or clean-fid file); the FID is then computed from the means and covariances.
    """
    if len(generated.features) and len(real.features):
        kid, kid_std = kernel_inception_distance(
            generated.features, real.features, kid_subsets, kid_subset_size
        )
    else:
        kid = kid_std = None
    complete = generated.num_images == len(generated.features) and real.num_images == len(
        real.features
    )
    if complete and min(generated.num_images, real.num_images) <= generated.features.shape[1]:
        # singular covariances
        fid = frechet_distance_from_features(generated.features, real.features)
    else:
        fid = frechet_distance(generated.mean, generated.covariance, real.mean, real.covariance)
    return {
        "fid": fid,
        "kid": kid,
        "kid_std": kid_std,
        "num_generated": generated.num_images,
        "num_real": real.num_images,
    }


def compute_statistics(
    batches, extractor, num_images=None, progress=False, max_kid_features=10_000
):
    """Streams uint8 image batches through `extractor` into `FeatureStatistics`."""
    stats = FeatureStatistics(max_kid_features)
    bar = keras.utils.Progbar(num_images, unit_name="image") if progress else None
    for images in batches:
        if num_images is not None:
            images = images[: num_images - stats.num_images]
        if len(images):
            stats.update(extractor(images))
            if bar:
                bar.update(stats.num_images)
        if num_images is not None and stats.num_images >= num_images:
            break
    if stats.num_images < 2:
        raise ValueError(f"FID needs at least 2 images. Received: {stats.num_images}")
    return stats


def load_statistics(path, extractor):
    """Precomputed statistics of real images: an .npz with `mu` and `sigma` (pytorch-fid's
    `--save-stats`, clean-fid's, or `eval --save-stats`). A file that records its features
    (written here) must match `extractor`'s network, resizing and weights; foreign files cannot
    say, so their settings are the user's to match (pytorch-fid's: --resize pytorch-fid,
    clean-fid's clean: --resize clean)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No statistics file at {path}.")
    try:
        stats = FeatureStatistics.load(path)
    except (OSError, ValueError) as error:
        if str(error).startswith(path):  # `load`'s own sentence
            raise
        raise ValueError(f"Could not read FID statistics from {path} ({error}).") from None
    recorded = {k: (stats.key or {}).get(k) for k in ("features", "resize", "weights")}
    expected = extractor.describe()
    mismatched = [k for k, v in recorded.items() if v is not None and v != expected[k]]
    if mismatched:
        described = ", ".join(f"{k} {recorded[k]} (here {expected[k]})" for k in mismatched)
        raise ValueError(f"{path} was computed with other features: {described}.")
    return stats


# Image sources: each yields uint8 batches (N, H, W, C) without holding them all.


def dataset_batches(name, image_size, image_channels, batch_size, **data_options):
    """Every image of a dataset or image folder, in order, via `keras_ddpm.data.make_dataset`,
    as uint8.

    `data_options` (`data_dir`, `crop`...) go to `make_dataset`, so real images get the
    training preprocessing (crop, resize to the model's size) before Inception's.
    """
    from keras_ddpm import data
    from keras_ddpm.diffusion_model import to_uint8

    accepted = {field.name for field in dataclasses.fields(data.DatasetOptions)}
    options = {
        "with_labels": False,
        "shuffle": False,
        "repeat": False,
        "drop_remainder": False,
        "prefetch_to_device": None,
    }
    options = {
        key: value
        for key, value in {**options, **data_options}.items()
        if key in accepted and value is not None
    }
    for batch in data.make_dataset(name, image_size, image_channels, batch_size, **options):
        yield to_uint8(keras.ops.convert_to_numpy(batch))


def folder_batches(directory, batch_size, image_size=None, image_channels=None):
    """Batches of a folder's images (`list_images`: recursive, sorted by path), read by Pillow and
    resized with its bicubic filter; size and channels default to the first image's."""
    paths = list_images(directory)
    if image_size is None or image_channels is None:
        first = read_image(paths[0], channels=image_channels, size=image_size)
        if first.shape[0] != first.shape[1] and image_size is None:
            raise ValueError(f"Images must be square. Received: {paths[0]} of shape {first.shape}")
        image_size, image_channels = first.shape[0], first.shape[-1]
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        yield np.stack([read_image(p, channels=image_channels, size=image_size) for p in batch])


def model_batches(
    model, num_images, batch_size, save_dir=None, seed=0, class_labels=None, **generate_kwargs
):
    """Samples `num_images` from a `DiffusionModel` in batches (batch i uses seed + i).

    Class-conditional models draw labels 0, 1, ..., K-1, 0, ... unless `class_labels` is set.
    With `save_dir`, every image is also written there as a numbered PNG.
    """
    from keras_ddpm.images import save_image

    for index, start in enumerate(range(0, num_images, batch_size)):
        count = min(batch_size, num_images - start)
        labels = class_labels
        if labels is None and model.num_classes:
            labels = np.arange(start, start + count) % model.num_classes
        images = model.generate(count, seed=seed + index, class_labels=labels, **generate_kwargs)
        if save_dir:
            for offset, image in enumerate(images):
                save_image(image, os.path.join(save_dir, f"{start + offset:06d}.png"))
        yield images


# Cached reference statistics.


def folder_fingerprint(directory):
    """Hash of a folder's image paths, sizes and modification times (changes invalidate caches)."""
    digest = hashlib.sha256(os.path.abspath(directory).encode())
    for path in list_images(directory):
        info = os.stat(path)
        digest.update(
            f"{os.path.relpath(path, directory)}:{info.st_size}:{info.st_mtime_ns}".encode()
        )
    return digest.hexdigest()[:16]


def default_cache_dir():
    return os.environ.get(
        "KERAS_DDPM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "keras_ddpm", "fid")
    )


def reference_key(source, image_size, image_channels, num_images, extractor, crop="auto"):
    """What a cached reference depends on: data (name and split, or folder contents), size,
    count, and the features (network, resizing, weights)."""
    if os.path.isdir(source):
        data = {"folder": os.path.abspath(source), "fingerprint": folder_fingerprint(source)}
    else:
        from keras_ddpm.data import parse_dataset_name

        name, split = parse_dataset_name(source)
        data = {"dataset": name, "split": split or "default"}
    return {
        **data,
        "crop": crop,
        "image_size": image_size,
        "image_channels": image_channels,
        "num_images": num_images or "all",
        "features": extractor.features,
        "resize": extractor.resize,
        "weights": extractor.name,
        "features_version": FEATURES_VERSION,
    }


def cache_path(key, cache_dir):
    label = (
        key.get("dataset", "folder")
        + "-"
        + key.get("split", os.path.basename(key.get("folder", "")))
    )
    label = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return os.path.join(
        cache_dir,
        f"{label}-{key['image_size']}px{key['image_channels']}c-n{key['num_images']}-{digest}.npz",
    )


def reference_statistics(
    source,
    image_size,
    image_channels,
    num_images,
    extractor,
    batch_size=50,
    cache_dir=None,
    progress=False,
    crop="auto",
    data_dir=None,
):
    """Statistics of real images (a dataset name or an image folder), cached in `cache_dir`.

    Returns `(stats, path)`: `path` is the cache file, or None when not cached (no
    cache_dir, or an extractor with random weights). The cache is an .npz read with
    `allow_pickle=False` and used only when its stored key matches.
    """
    key = reference_key(source, image_size, image_channels, num_images, extractor, crop)
    path = cache_path(key, cache_dir) if cache_dir and extractor.name else None
    if path and os.path.isfile(path):
        try:
            stats = FeatureStatistics.load(path)
            if stats.key == key:
                return stats, path
        except (OSError, ValueError, KeyError):
            pass  # unreadable or foreign: computed again and overwritten
    batches = dataset_batches(
        source, image_size, image_channels, batch_size, crop=crop, data_dir=data_dir
    )
    stats = compute_statistics(batches, extractor, num_images, progress)
    if path:
        stats.save(path, key)
    return stats, path
