"""Nothing outside `keras_ddpm/backend/` asks which Keras backend is active or reaches into private
Keras or PyTorch API: the backend package dispatches, and `keras_ddpm.backend.internals` holds
every private access behind a version check.

Reads the source (Python's `ast`, so comments and docstrings may name anything) of keras_ddpm/
outside keras_ddpm/backend/, of cli.py where it exists and of apps/. Recording the backend's name
(`backend.backend_name()` written into config.json, shown in the app) is not asking.
"""

import ast
import importlib
import os

import keras
import pytest
from conftest import REPO

pytestmark = pytest.mark.once  # reads source files

BACKENDS = ("tensorflow", "torch", "jax")
# TensorFlow is imported outside the backend package only where it serves every backend alike.
TENSORFLOW_ALLOWED = {
    "keras_ddpm/data/": "the input pipelines are tf.data (and tfds) under every Keras backend",
    "keras_ddpm/callbacks.py": "tf.summary writes TensorBoard event files under every backend",
    "keras_ddpm/convert/tf_checkpoint.py": "the DDPM authors' checkpoints are read with "
    "tf.train.load_checkpoint under every backend",
}
# PyTorch is imported outside the backend package only to read PyTorch files, under every backend.
TORCH_ALLOWED = {
    "keras_ddpm/convert/files.py": "torch.load(weights_only=True) reads .pth/.bin checkpoints",
}
# Underscore names that are public API: namedtuple's methods.
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}
# Private Keras attributes that exist on some backends only (`keras_private_names` sees the
# active one's), as keras_ddpm once read them.
KERAS_PRIVATE_ELSEWHERE = {
    "_distribute_strategy",
    "_trainable_variables",
    "_non_trainable_variables",
}
# The base classes whose private attributes a subclass must not touch through `self`.
KERAS_BASES = (
    keras.layers.Layer,
    keras.callbacks.Callback,
    keras.optimizers.Optimizer,
    keras.optimizers.schedules.LearningRateSchedule,
    keras.initializers.Initializer,
)


def scanned_files():
    """Repository-relative paths of the Python files that must not ask for the backend."""
    paths = []
    for top in ("keras_ddpm", "apps"):
        for folder, subfolders, files in os.walk(os.path.join(REPO, top)):
            subfolders[:] = [s for s in subfolders if s != "__pycache__"]
            relative = os.path.relpath(folder, REPO).replace(os.sep, "/")
            if relative == "keras_ddpm/backend" or relative.startswith("keras_ddpm/backend/"):
                continue
            paths += [f"{relative}/{name}" for name in sorted(files) if name.endswith(".py")]
    if os.path.isfile(os.path.join(REPO, "cli.py")):
        paths.append("cli.py")
    return paths


def keras_private_names():
    """The private (single-underscore) attribute names of Keras' objects on this backend (and, on
    PyTorch, of the torch modules Keras' layers are): a model, a layer, an optimizer, a variable,
    a callback, a metric."""
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    model.compile(optimizer="adam", loss="mse")
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    objects = [model, model.layers[1], optimizer, model.trainable_variables[0]]
    objects += [keras.callbacks.Callback(), keras.metrics.Mean(), keras.random.SeedGenerator(0)]
    names = set()
    for item in objects:
        names |= set(dir(item)) | set(vars(item))
    names = {name for name in names if name.startswith("_") and not name.startswith("__")}
    return names | KERAS_PRIVATE_ELSEWHERE


def dotted(node):
    """`a.b.c` for an attribute chain on a name; None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def is_private(name):
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORE


def asks_for_the_backend(call):
    """Whether `call` reads the active backend's name from Keras (`keras.backend.backend()`,
    `keras.config.backend()`) or from our package (`backend_name()`)."""
    name = dotted(call.func) if isinstance(call, ast.Call) else None
    return name is not None and name.split(".")[-1] in ("backend", "backend_name")


class Finder(ast.NodeVisitor):
    """Collects (line, what) for every question about the backend and every private access."""

    def __init__(self, path, keras_classes, private_names):
        self.path = path
        self.keras_classes = keras_classes  # names of this module's Keras subclasses
        self.private_names = private_names
        self.classes = []
        self.found = []

    def report(self, node, what):
        self.found.append(f"{self.path}:{node.lineno}: {what}")

    def visit_ClassDef(self, node):
        self.classes.append(node.name)
        self.generic_visit(node)
        self.classes.pop()

    def in_keras_subclass(self):
        return bool(self.classes) and self.classes[-1] in self.keras_classes

    def visit_Import(self, node):
        for alias in node.names:
            self.check_import(node, alias.name)

    def visit_ImportFrom(self, node):
        module = node.module or ""
        self.check_import(node, module)
        if module == "keras_ddpm.backend":
            for alias in node.names:
                if alias.name in BACKENDS:
                    self.report(node, f"imports the {alias.name} backend module")

    def check_import(self, node, module):
        root = module.split(".")[0]
        if root == "torch" and self.path in TORCH_ALLOWED:
            return
        if root in ("torch", "jax", "jaxlib"):
            self.report(node, f"imports {module}")
        elif root == "tensorflow" and not any(self.path.startswith(p) for p in TENSORFLOW_ALLOWED):
            self.report(node, f"imports {module} (not in TENSORFLOW_ALLOWED)")
        elif module.startswith("keras.src") or module.startswith("keras_ddpm.backend."):
            if module != "keras_ddpm.backend.internals" or not self.path.startswith("keras_ddpm/"):
                self.report(node, f"imports {module}")

    def visit_Compare(self, node):
        if any(asks_for_the_backend(side) for side in [node.left, *node.comparators]):
            self.report(node, "compares the backend's name")
        self.generic_visit(node)

    def visit_Call(self, node):
        name = dotted(node.func)
        if name in ("keras.backend.backend", "keras.config.backend"):
            self.report(node, f"calls {name}() (the name is backend.backend_name())")
        if name in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2:
            owner, attribute = node.args[0], node.args[1]
            if isinstance(attribute, ast.Constant) and isinstance(attribute.value, str):
                self.check_private(node, owner, attribute.value)
        self.generic_visit(node)

    def visit_Attribute(self, node):
        self.check_private(node, node.value, node.attr)
        self.generic_visit(node)

    def visit_Name(self, node):
        if node.id == "ON_TORCH":
            self.report(node, "ON_TORCH")

    def check_private(self, node, owner, attribute):
        if not is_private(attribute):
            return
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            if self.in_keras_subclass() and attribute in self.private_names:
                self.report(node, f"self.{attribute} is Keras' private attribute")
            return
        self.report(node, f"private attribute {attribute} of {ast.unparse(owner)}")


def keras_subclasses(path):
    """Names of the classes of the module at `path` that subclass Keras' classes."""
    if not path.startswith("keras_ddpm/"):
        return set()  # apps/ and cli.py define no Keras subclasses
    module = path[: -len(".py")].replace("/", ".").removesuffix(".__init__")
    namespace = vars(importlib.import_module(module))
    return {
        name
        for name, value in namespace.items()
        if isinstance(value, type) and issubclass(value, KERAS_BASES) and value.__module__ == module
    }


def findings(path, private_names):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    finder = Finder(path, keras_subclasses(path), private_names)
    finder.visit(tree)
    return finder.found


def test_the_scan_covers_the_package_the_cli_and_the_app():
    paths = scanned_files()
    assert "keras_ddpm/layers.py" in paths and "keras_ddpm/diffusion_model.py" in paths
    assert any(p in paths for p in ("cli.py", "keras_ddpm/cli.py"))
    assert any(p.startswith("apps/") for p in paths)
    assert not any(p.startswith("keras_ddpm/backend/") for p in paths)


def test_nothing_outside_the_backend_package_asks_for_the_backend_or_reaches_private_api():
    private_names = keras_private_names()
    found = [line for path in scanned_files() for line in findings(path, private_names)]
    assert not found, "\n".join(found)


CAUGHT = """
import torch
from keras_ddpm.backend import jax
ON_TORCH = keras.backend.backend() == "torch"
if backend.backend_name() != "jax":
    pass
name = keras.config.backend()
layers = model._flatten_layers(include_self=False)
state = getattr(optimizer, "_momentums")
torch._foreach_mul_(tensors, 2.0)
import tensorflow as tf

class Layer(keras.layers.Layer):
    def call(self, x):
        return self._trainable_variables, self._own_cache
"""


@pytest.mark.parametrize("path", ["keras_ddpm/example.py"])
def test_the_finder_catches_each_kind_of_question(path):
    finder = Finder(path, {"Layer"}, keras_private_names())
    finder.visit(ast.parse(CAUGHT))
    kinds = [line.split(": ", 1)[1] for line in finder.found]
    assert kinds == [
        "imports torch",
        "imports the jax backend module",
        "ON_TORCH",
        "compares the backend's name",
        "calls keras.backend.backend() (the name is backend.backend_name())",
        "compares the backend's name",
        "calls keras.config.backend() (the name is backend.backend_name())",
        "private attribute _flatten_layers of model",
        "private attribute _momentums of optimizer",
        "private attribute _foreach_mul_ of torch",
        "imports tensorflow (not in TENSORFLOW_ALLOWED)",
        "self._trainable_variables is Keras' private attribute",
    ]
    # Recording the name is not asking; tf.data code may import TensorFlow.
    recorded = 'settings = {"backend": backend.backend_name()}\nimport tensorflow as tf\n'
    finder = Finder("keras_ddpm/data/pipeline.py", set(), set())
    finder.visit(ast.parse(recorded))
    assert finder.found == []
