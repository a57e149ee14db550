"""A local folder of images as a dataset source.

The folder is searched recursively for .jpg, .jpeg, .png, .webp, .bmp and .gif files
(hidden files and folders are skipped). When no image lies directly in the folder and
its images sit in first-level subfolders, each subfolder is a class (sorted by name,
labels 0..K-1), like `keras.utils.image_dataset_from_directory`; otherwise there are no
labels. Files that cannot be read are skipped and reported once with their path.
"""

import dataclasses
import os
import threading
import warnings

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The images of a folder: sorted paths, their labels, and the class names."""

    root: str
    paths: tuple
    labels: tuple  # int per path; all 0 when there are no classes
    class_names: tuple  # () when the folder has no class subfolders

    @property
    def num_classes(self):
        return len(self.class_names)


def is_folder_name(name):
    """Whether a dataset name means a local folder rather than a tfds or embedded name.

    An existing folder, or any name starting with ".", "~" or "/" (so a mistyped path is
    reported as a missing folder); "name/config" stays a tfds name unless such a folder exists.
    """
    return name.startswith((".", "~", "/", os.sep)) or os.path.isdir(os.path.expanduser(name))


def list_image_folder(root):
    """Scans `root`; raises FileNotFoundError when it is missing or holds no image."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"No folder at {root}; pass an existing folder of images, a tfds dataset name or mnist_5k.")
    paths = []
    for directory, subdirectories, files in os.walk(root, followlinks=True):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        paths.extend(
            os.path.join(directory, f)
            for f in files
            if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
        )
    if not paths:
        raise FileNotFoundError(
            f"No images ({', '.join(e[1:] for e in IMAGE_EXTENSIONS)}) found under {root}; "
            "put the training images there (optionally one subfolder per class)."
        )
    paths.sort()
    relative = [os.path.relpath(p, root).split(os.sep) for p in paths]
    if all(len(parts) > 1 for parts in relative):
        class_names = tuple(sorted({parts[0] for parts in relative}))
        index = {name: i for i, name in enumerate(class_names)}
        labels = tuple(index[parts[0]] for parts in relative)
    else:
        class_names, labels = (), (0,) * len(paths)
    return ImageFolder(root=root, paths=tuple(paths), labels=labels, class_names=class_names)


class UnreadableImageReport:
    """Warns once per unreadable file (tf.data may call from several threads)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.paths = []

    def __call__(self, path, reason):
        with self._lock:
            if path in self.paths:
                return
            self.paths.append(path)
        warnings.warn(f"Skipping unreadable image {path} ({reason}).", stacklevel=2)
