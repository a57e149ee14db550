"""Input data: tf.data pipelines over the embedded MNIST digits, tfds datasets and image folders.

`make_dataset` (in `pipeline`) is the entry point; the modules beside it are its parts:
    pipeline      dataset names, their defaults, and `make_dataset` itself
    arrays        the embedded datasets as NumPy batches when TensorFlow is not installed
    folder        a local folder of images (class subfolders give labels)
    tfds          TensorFlow Datasets image datasets
    transforms    decode, crop, resize, channels, [-1, 1] and flips, in TensorFlow
    image_files   the image extensions, `list_images` and the one Pillow reader `read_image`
"""

from keras_ddpm.data.image_files import IMAGE_EXTENSIONS
from keras_ddpm.data.image_files import UnreadableImageError
from keras_ddpm.data.image_files import list_images
from keras_ddpm.data.image_files import read_image
from keras_ddpm.data.pipeline import AUTO_CACHE_BYTES
from keras_ddpm.data.pipeline import EMBEDDED_DATASETS
from keras_ddpm.data.pipeline import MNIST_5K_TEST_PER_CLASS
from keras_ddpm.data.pipeline import NO_FLIP_DATASETS
from keras_ddpm.data.pipeline import SHUFFLE_BUFFER
from keras_ddpm.data.pipeline import DatasetOptions
from keras_ddpm.data.pipeline import check_dataset_name
from keras_ddpm.data.pipeline import default_crop
from keras_ddpm.data.pipeline import default_horizontal_flip
from keras_ddpm.data.pipeline import import_tensorflow
from keras_ddpm.data.pipeline import load_arrays
from keras_ddpm.data.pipeline import load_mnist_5k
from keras_ddpm.data.pipeline import make_dataset
from keras_ddpm.data.pipeline import num_classes
from keras_ddpm.data.pipeline import parse_dataset_name
from keras_ddpm.data.pipeline import tensorflow_installed

__all__ = [
    "IMAGE_EXTENSIONS",
    "UnreadableImageError",
    "list_images",
    "read_image",
    "AUTO_CACHE_BYTES",
    "EMBEDDED_DATASETS",
    "MNIST_5K_TEST_PER_CLASS",
    "NO_FLIP_DATASETS",
    "SHUFFLE_BUFFER",
    "default_crop",
    "default_horizontal_flip",
    "import_tensorflow",
    "load_arrays",
    "load_mnist_5k",
    "DatasetOptions",
    "check_dataset_name",
    "make_dataset",
    "num_classes",
    "parse_dataset_name",
    "tensorflow_installed",
]
