"""A local folder of images as a dataset source.

The folder is searched recursively for the files of `image_files.IMAGE_EXTENSIONS` (hidden
files and folders are skipped). When no image lies directly in the folder and its images sit
in first-level subfolders, each subfolder is a class (sorted by name, labels 0..K-1), like
`keras.utils.image_dataset_from_directory`; otherwise there are no labels. Files that cannot be
read are skipped and reported once, as one line on stderr naming the file.
"""

import dataclasses
import os
import sys
import threading

from keras_ddpm.data import image_files


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
        raise FileNotFoundError(
            f"No folder at {root}; pass an existing folder of images, a tfds dataset name or "
            "mnist_5k."
        )
    paths = image_files.list_images(root)
    relative = [os.path.relpath(p, root).split(os.sep) for p in paths]
    if all(len(parts) > 1 for parts in relative):
        class_names = tuple(sorted({parts[0] for parts in relative}))
        index = {name: i for i, name in enumerate(class_names)}
        labels = tuple(index[parts[0]] for parts in relative)
    else:
        class_names, labels = (), (0,) * len(paths)
    return ImageFolder(root=root, paths=tuple(paths), labels=labels, class_names=class_names)


def require_classes(root):
    """Raises one sentence unless the folder `root` has class subfolders (`--class-cond`)."""
    image_folder = list_image_folder(root)
    if not image_folder.num_classes:
        raise ValueError(
            f"--class-cond needs labels, and {image_folder.root} has no class subfolders: put "
            "each class's images in its own subfolder (e.g. cats/ and dogs/), one level down."
        )
    return image_folder


class UnreadableImageReport:
    """Reports each unreadable file once, as one line on stderr (tf.data may call from several
    threads): "keras_ddpm: skipping unreadable image PATH (reason)"."""

    def __init__(self):
        self._lock = threading.Lock()
        self.paths = []

    def __call__(self, path, reason):
        with self._lock:
            if path in self.paths:
                return
            self.paths.append(path)
        print(f"keras_ddpm: skipping unreadable image {path} ({reason})", file=sys.stderr)
        sys.stderr.flush()
