"""The sampling app: a Gradio web UI over keras_ddpm's sampling modes.

    python apps/sample_app.py [--model PATH ...] [--host 127.0.0.1] [--port 7860] [--share]

It serves the models in saved_models/ and those given with --model, and nothing else: models load
with Keras' safe mode, and uploaded files are only ever decoded as images by Pillow. The work is
`keras_ddpm.sample_request` (the same code as `python cli.py sample`), and the form is built from
`keras_ddpm.sampling_options`; the form shows the command line that draws its images, and every
result the one that draws it again.

One request may cost at most --max-evaluations network evaluations (images x steps x rows, twice
that with guidance: `SampleRequest.network_evaluations`), 16,000 by default: the default grid of
16 images through all 1,000 steps of DDPM, about 10 minutes of a 2-core CPU with the shipped MNIST
model (seconds on a GPU). Larger requests are refused, so no one holds the sampling slot for long;
the form's light handlers (the command preview, the random seed) answer beside a running request.
"""

import argparse
import json
import os
import random
import shutil
import socket
import sys
import tempfile
import threading
import zipfile

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home (and no internet here)

from keras_ddpm.quiet import quiet_framework_logs  # noqa: E402

quiet_framework_logs()  # TensorFlow's start-up lines kept off the terminal, even for --help

import gradio as gr  # noqa: E402

from keras_ddpm import backend  # noqa: E402
from keras_ddpm import sample_request  # noqa: E402
from keras_ddpm import sampling_options as options  # noqa: E402
from keras_ddpm.errors import describe_error  # noqa: E402
from keras_ddpm.images import save_gif  # noqa: E402
from keras_ddpm.images import save_image  # noqa: E402
from keras_ddpm.saving import load_model_file  # noqa: E402
from keras_ddpm.saving import model_file  # noqa: E402
from keras_ddpm.saving import shipped_models  # noqa: E402

REPO = os.path.dirname(
    os.path.dirname(os.path.abspath(__file__))
)  # model labels are relative to it
ALL_CLASSES = "all (a column per class)"
CSS = (  # small tiles, drawn sharp
    "#grid img, #gif img { image-rendering: pixelated; width: 100%; height: 100%; "
    "object-fit: contain; }"
)
KEPT_RESULTS = 32  # result folders kept on disk; older ones are deleted
MAX_EVALUATIONS = 16_000  # network evaluations one request may cost (see the module's docstring)
# The form's fields, in the order the UI passes them to `SamplingApp.sample`, `request`, `preview`.
FORM_FIELDS = (
    "model_path",
    "mode",
    "sampler",
    "steps",
    "eta",
    "guidance",
    "class_label",
    "seed",
    "num_images",
    "n_frames",
    "upload1",
    "index1",
    "upload2",
    "index2",
    "interpolate_at",
    "n_points",
    "space",
    "coarse_timesteps",
    "mask",
)


class ModelRegistry:
    """The models the app may load: saved_models/*.keras and the files given on the command line."""

    def __init__(self, extra_paths=(), saved_models=None):
        # A published checkpoint (a diffusers folder, a Hub id...) is served as its conversion.
        extra_paths = [model_file(path) for path in extra_paths]
        for path in extra_paths:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"No model file at {path}.")
        paths = [*extra_paths, *shipped_models(saved_models)]
        self.paths = list(dict.fromkeys(os.path.realpath(p) for p in paths))  # the first: default
        self._models = {}
        self._lock = threading.Lock()

    def load(self, path):
        """The model at `path`, loaded once (safe mode); any path not listed is refused."""
        real = os.path.realpath(path) if isinstance(path, str) else None
        if real not in self.paths:
            raise ValueError("Choose one of the listed models; the app loads no other file.")
        with self._lock:
            if real not in self._models:
                self._models[real] = load_model_file(real)
            return self._models[real]

    def label(self, path):
        relative = os.path.relpath(path, REPO)
        return path if relative.startswith("..") else relative

    def describe(self, path):
        model = self.load(path)
        unet, diffusion = model.config.unet, model.config.diffusion
        return {
            "model": self.label(path),
            "preset": model.config.name,
            "image size": f"{unet.image_size}x{unet.image_size}x{unet.image_channels}",
            "classes": unet.num_classes or "unconditional",
            "timesteps": diffusion.timesteps,
            "prediction": diffusion.prediction,
            "parameters": f"{model.network.count_params():,}",
        }


class SamplingApp:
    """Turns the form's values into a `SampleRequest`, runs it and writes the files to download.

    Its methods take the form's values (`FORM_FIELDS`) in order, by name, or both.
    """

    def __init__(
        self,
        registry,
        dataset=options.DEFAULTS.dataset,
        max_images=64,
        max_evaluations=MAX_EVALUATIONS,
        work_dir=None,
    ):
        self.registry = registry
        self.dataset = dataset
        self.max_images = max_images
        self.max_evaluations = max_evaluations
        self.work_dir = work_dir or tempfile.mkdtemp(prefix="keras_ddpm_app_")

    def request(self, *values, **named):
        """(model, the checked `SampleRequest`, the uploads its mode uses) of the form's values; a
        bad value, or a request over the app's limits, raises ValueError with one sentence."""
        form = _form(values, named)
        model = self.registry.load(form["model_path"])
        required = {
            "Steps": "steps",
            "Seed": "seed",
            "The number of images": "num_images",
            "Eta": "eta",
            "Guidance": "guidance",
        }
        for label, name in required.items():
            if form[name] is None or form[name] == "":
                raise ValueError(f"{label} is empty; enter a number.")
        class_label = form["class_label"]
        request = sample_request.SampleRequest(
            mode=form["mode"],
            sampler=form["sampler"],
            steps=_whole(form["steps"]),
            eta=_number(form["eta"], "eta"),
            guidance=_number(form["guidance"], "guidance"),
            class_label=None if class_label in (None, "", ALL_CLASSES) else _whole(class_label),
            seed=_whole(form["seed"]),
            batch_size=_whole(form["num_images"]),
            n_frames=_whole(form["n_frames"]),
            dataset=self.dataset,
            image_idx1=_whole(form["index1"]),
            image_idx2=_whole(form["index2"]),
            interpolate_at=_blank_or_whole(form["interpolate_at"]),
            n_points=_whole(form["n_points"]),
            interpolation_space=form["space"],
            coarse_timesteps=options.parse_coarse_timesteps(form["coarse_timesteps"]),
            mask=(form["mask"] or "").strip() or None,
        ).resolve(model, max_images=self.max_images, max_evaluations=self.max_evaluations)
        uploads = [form["upload1"], form["upload2"]]
        return model, request, uploads[: options.REAL_IMAGE_MODES.get(request.mode, 0)]

    def preview(self, *values, **named):
        """The command line of the form's values (what Generate would draw), or the sentence that
        refuses them as a shell comment; cheap (nothing is drawn), so it answers beside a running
        request."""
        form = _form(values, named)
        try:
            _, request, uploads = self.request(**form)
        except (ValueError, FileNotFoundError) as error:
            return f"# {describe_error(error)}"
        save_name = "samples.gif" if request.mode == "denoising_process" else "samples.png"
        return self._command(request, form["model_path"], save_name, uploaded=any(uploads))

    def sample(self, *values, progress=None, **named):
        """Returns (grid PNG path, GIF path or None, files to download, settings JSON, CLI command);
        a bad value raises ValueError with one sentence."""
        form = _form(values, named)
        model, request, uploads = self.request(**form)
        size, channels = model.config.unet.image_size, model.config.unet.image_channels
        given = [
            None if not path else sample_request.load_image_file(path, size, channels)
            for path in uploads
        ]
        images = sample_request.real_images(model, request, given) if uploads else None

        def report(done, total, chain):
            if progress is not None:
                progress(
                    (done, total),
                    desc=f"chain {chain}: denoising step {done}/{total}",
                    unit="steps",
                )

        result = sample_request.run(sample_request.StepReporter(model, report), request, images)
        out = self._result_dir()
        grid_path = save_image(result.grid(request.padding), os.path.join(out, "samples.png"))
        gif_path = None
        if result.frames is not None:
            gif_path = save_gif(
                result.gif_frames(request.padding),
                os.path.join(out, "samples.gif"),
                request.frame_ms,
                request.hold_ms,
            )
        with zipfile.ZipFile(os.path.join(out, "tiles.zip"), "w") as archive:
            for index, tile in enumerate(result.tiles):
                name = f"tiles/{index:04d}.png"
                archive.write(save_image(tile, os.path.join(out, name)), name)
        uploaded = any(g is not None for g in given)
        command = self._command(
            request, form["model_path"], os.path.basename(gif_path or grid_path), uploaded
        )
        settings = {
            "model": self.registry.label(os.path.realpath(form["model_path"])),
            "backend": backend.backend_name(),
            **request.settings(),
        }
        if uploads:
            settings["uploads"] = [g is not None for g in given]
        settings_path = os.path.join(out, "settings.json")
        with open(settings_path, "w") as f:
            json.dump(settings, f, indent=2)
        files = [
            grid_path,
            *([gif_path] if gif_path else []),
            os.path.join(out, "tiles.zip"),
            settings_path,
        ]
        return grid_path, gif_path, files, json.dumps(settings, indent=2), command

    def _command(self, request, model_path, save_name, uploaded):
        model = self.registry.label(os.path.realpath(model_path))
        command = request.command(model, save_name, dataset="UPLOADS_DIR" if uploaded else None)
        if uploaded:
            command += (
                "\n# UPLOADS_DIR: a folder of the images used (the uploads and any dataset image), "
                "at the indices given."
            )
        return command

    def _result_dir(self):
        old = sorted(
            (os.path.join(self.work_dir, d) for d in os.listdir(self.work_dir)),
            key=os.path.getmtime,
        )
        for path in old[: max(0, len(old) - KEPT_RESULTS + 1)]:
            shutil.rmtree(path, ignore_errors=True)
        return tempfile.mkdtemp(dir=self.work_dir)


def _form(values, named):
    """The form's values by field name: `values` in `FORM_FIELDS` order, then `named`."""
    if len(values) > len(FORM_FIELDS):
        raise TypeError(f"The form has {len(FORM_FIELDS)} fields. Received: {len(values)} values")
    form = {**dict(zip(FORM_FIELDS, values)), **named}
    missing = [name for name in FORM_FIELDS if name not in form]
    unknown = [name for name in form if name not in FORM_FIELDS]
    if missing or unknown:
        raise TypeError(f"Form fields missing: {missing}; unknown: {unknown}")
    return form


def _whole(value):
    """A form number as an int (Gradio gives floats); other values go on to the request's checks."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return value


def _blank_or_whole(value):
    """A form field where blank means the default (None)."""
    return (
        None if value is None or (isinstance(value, str) and not value.strip()) else _whole(value)
    )


def _number(value, name):
    if not isinstance(value, (int, float)):
        raise ValueError(f"{name[0].upper()}{name[1:]} must be a number. Received: {value!r}")
    return value


def build_ui(app):
    """The Gradio Blocks of `app` (a `SamplingApp`); its widgets' choices and defaults are
    `sampling_options`'."""
    registry = app.registry
    defaults = options.DEFAULTS
    rows = [registry.describe(p) for p in registry.paths]
    max_classes = max(int(m.num_classes or 0) for m in map(registry.load, registry.paths))
    table = "| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n"
    table += "\n".join("| " + " | ".join(str(v) for v in row.values()) + " |" for row in rows)

    def model_changed(path):
        model = registry.load(path)
        classes = model.num_classes or 0
        choices = [ALL_CLASSES, *map(str, range(classes))]
        return gr.update(choices=choices, value=ALL_CLASSES, visible=bool(classes))

    def mode_changed(mode):
        """The sampler of `mode`; the fields it reads (`MODE_OPTIONS`) shown, the others hidden."""
        reads, real = options.MODE_OPTIONS[mode], options.REAL_IMAGE_MODES.get(mode, 0)
        frames = options.DEFAULT_FRAMES.get(mode)
        return (
            gr.update(value=options.default_sampler(mode)),
            gr.update(visible="n_frames" in reads, **({"value": frames} if frames else {})),
            gr.update(visible=bool(real)),
            gr.update(visible=real == 2),
            gr.update(visible="n_points" in reads),
            gr.update(visible="coarse_timesteps" in reads),
            gr.update(visible="mask" in reads),
            gr.update(visible="frame_ms" in reads),  # the GIF of the denoising process
        )

    def sample(*values, progress=gr.Progress()):
        try:
            return app.sample(*values, progress=progress)
        except (ValueError, FileNotFoundError) as error:
            raise gr.Error(describe_error(error), print_exception=False) from None

    first_frames = next(iter(options.DEFAULT_FRAMES.values()))
    with gr.Blocks(title="keras_ddpm sampling", analytics_enabled=False) as demo:
        gr.Markdown(
            "# keras_ddpm sampling\nDenoising diffusion models on Keras 3 (backend: "
            f"**{backend.backend_name()}**)."
        )
        gr.Markdown(table, elem_id="models")
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(
                    [(registry.label(p), p) for p in registry.paths],
                    value=registry.paths[0],
                    label="Model",
                    elem_id="model",
                )
                mode = gr.Radio(
                    [(label, m) for m, label in options.MODE_LABELS.items()],
                    value=defaults.mode,
                    label="Mode",
                    elem_id="mode",
                )
                sampler_default = options.default_sampler(defaults.mode)
                with gr.Row():
                    sampler = gr.Dropdown(
                        list(options.SAMPLERS),
                        value=sampler_default,
                        label="Sampler",
                        elem_id="sampler",
                    )
                    steps = gr.Number(
                        options.default_steps(sampler_default),
                        precision=0,
                        label="Steps",
                        elem_id="steps",
                    )
                with gr.Row():
                    eta = gr.Number(
                        defaults.eta, label="eta (DDIM; 0: deterministic)", elem_id="eta"
                    )
                    guidance = gr.Number(defaults.guidance, label="Guidance w", elem_id="guidance")
                initial_classes = registry.load(registry.paths[0]).num_classes or 0
                class_label = gr.Dropdown(
                    [ALL_CLASSES, *map(str, range(max_classes))],
                    value=ALL_CLASSES,
                    label="Class label",
                    visible=bool(initial_classes),
                    elem_id="class_label",
                )
                with gr.Row():
                    seed = gr.Number(defaults.seed, precision=0, label="Seed", elem_id="seed")
                    random_seed = gr.Button("Random seed", elem_id="random_seed", size="sm")
                with gr.Row():
                    num_images = gr.Number(
                        defaults.batch_size,
                        precision=0,
                        label=f"Number of images (max {app.max_images})",
                        elem_id="num_images",
                    )
                    n_frames = gr.Number(
                        first_frames, precision=0, label="Frames", visible=False, elem_id="n_frames"
                    )
                with gr.Group(visible=False) as real_group:
                    gr.Markdown(
                        "Real images: upload one (any size or mode), or leave empty to use an "
                        f"index of `{app.dataset}`."
                    )
                    with gr.Row():
                        upload1 = gr.File(
                            label="Image 1",
                            file_types=["image"],
                            type="filepath",
                            elem_id="upload1",
                        )
                        index1 = gr.Number(
                            defaults.image_idx1,
                            precision=0,
                            label="Image 1 index",
                            elem_id="index1",
                        )
                    with gr.Row(visible=False) as second_row:
                        upload2 = gr.File(
                            label="Image 2",
                            file_types=["image"],
                            type="filepath",
                            elem_id="upload2",
                        )
                        index2 = gr.Number(
                            defaults.image_idx2,
                            precision=0,
                            label="Image 2 index",
                            elem_id="index2",
                        )
                    with gr.Row(visible=False) as interpolation_row:
                        # A text field: Gradio's number field shows and sends 0 for an empty value.
                        interpolate_at = gr.Textbox(
                            "",
                            label="Noise to t (blank: T/2)",
                            placeholder="T/2",
                            elem_id="interpolate_at",
                        )
                        n_points = gr.Number(
                            defaults.n_points, precision=0, label="Points", elem_id="n_points"
                        )
                        space = gr.Radio(
                            list(options.INTERPOLATION_SPACES),
                            value=defaults.interpolation_space,
                            label="Space",
                            elem_id="space",
                        )
                    coarse = gr.Textbox(
                        label="Timesteps, one row each (blank: T, 3T/4, T/2, T/4, T/10, T/40)",
                        visible=False,
                        elem_id="coarse",
                    )
                    mask = gr.Textbox(
                        label="Box to fill: x0,y0,x1,y1 (blank: the central half)",
                        visible=False,
                        elem_id="mask",
                    )
                run_button = gr.Button("Generate", variant="primary", elem_id="generate")
                gr.Markdown(
                    f"One request may cost at most {app.max_evaluations:,} network evaluations "
                    "(images x steps x rows, twice that with guidance).",
                    elem_id="limits",
                )
            with gr.Column(scale=1):
                grid = gr.Image(
                    label="Samples",
                    type="filepath",
                    format="png",
                    interactive=False,
                    height=360,
                    elem_id="grid",
                )
                gif = gr.Image(
                    label="Denoising process",
                    type="filepath",
                    interactive=False,
                    visible=False,
                    height=360,
                    elem_id="gif",
                )
                files = gr.File(
                    label="Download", file_count="multiple", interactive=False, elem_id="files"
                )
                settings = gr.Code(
                    label="Settings used", language="json", interactive=False, elem_id="settings"
                )
                command = gr.Code(
                    label="The same images from the command line",
                    language="shell",
                    interactive=False,
                    wrap_lines=True,
                    lines=3,
                    max_lines=6,
                    elem_id="command",
                )
        model.change(model_changed, model, class_label, queue=False)
        shown = [sampler, n_frames, real_group, second_row, interpolation_row, coarse, mask, gif]
        mode.change(mode_changed, mode, shown, queue=False)
        random_seed.click(lambda: random.randint(0, options.MAX_SEED), None, seed, queue=False)
        inputs = [  # in `FORM_FIELDS` order
            model,
            mode,
            sampler,
            steps,
            eta,
            guidance,
            class_label,
            seed,
            num_images,
            n_frames,
            upload1,
            index1,
            upload2,
            index2,
            interpolate_at,
            n_points,
            space,
            coarse,
            mask,
        ]
        run_button.click(
            sample, inputs, [grid, gif, files, settings, command], concurrency_id="sampling"
        )
        # The command preview: cheap and unqueued, so it answers while a request runs.
        gr.on(
            [demo.load, *(component.change for component in inputs)],
            app.preview,
            inputs,
            command,
            queue=False,
            show_progress="hidden",
        )
    return demo


def _port(text):
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 1 to 65535, not {text!r}")
    return int(text)


def _positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, not {text!r}")
    return int(text)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="A web app that samples keras_ddpm models.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,  # "(default: X)" after each help
    )
    parser.set_defaults(model=[])  # --model's, kept out of its help (an empty list)
    parser.add_argument(
        "--model",
        action="append",
        default=argparse.SUPPRESS,
        help="A .keras file, diffusers folder or Hub id (converted once) to serve as well as "
        "saved_models/ (repeatable).",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="Address to bind (127.0.0.1: this machine only; 0.0.0.0 serves the network).",
    )
    parser.add_argument("--port", type=_port, default=7860, help="Port to serve on.")
    parser.add_argument(
        "--share",
        action="store_true",
        help="Also serve through a public gradio.live link (needs internet access).",
    )
    parser.add_argument(
        "--dataset",
        default=options.DEFAULTS.dataset,
        help="Real images chosen by index (interpolation, coarse-to-fine, inpainting).",
    )
    parser.add_argument(
        "--max-images", type=int, default=64, help="Most images one request may draw."
    )
    parser.add_argument(
        "--max-evaluations",
        type=_positive,
        default=MAX_EVALUATIONS,
        help="Most network evaluations one request may cost (images x steps x rows, twice that "
        "with guidance).",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="Sampling requests run at once; the rest wait in the queue.",
    )
    parser.add_argument(
        "--max-queue", type=int, default=32, help="Requests that may wait; more are turned away."
    )
    return parser.parse_args(argv)


def main(argv=None, block=True):
    """Starts the app and prints one line with its address; with block=False returns (demo, url)
    and leaves the server running."""
    args = parse_args(argv)
    backend.configure_xla_cpu()  # before any model work
    _check_port(args.host, args.port)  # before the models load: a taken port fails at once
    try:
        registry = ModelRegistry(args.model)
        if not registry.paths:
            raise ValueError(
                "No model to serve: saved_models/ holds no .keras file; pass --model PATH."
            )
        for path in registry.paths:
            registry.load(path)  # fail now, not on the first request
    except (ValueError, OSError) as error:  # a missing, unreadable, damaged or foreign file
        sys.exit(f"error: {describe_error(error)}")
    demo = build_ui(SamplingApp(registry, args.dataset, args.max_images, args.max_evaluations))
    demo.queue(default_concurrency_limit=args.concurrency, max_size=args.max_queue)
    try:
        _, url, share_url = demo.launch(
            server_name=args.host,
            server_port=args.port,
            share=args.share,
            prevent_thread_lock=True,  # the address is printed, then `block_thread` waits
            show_error=False,
            quiet=True,  # Gradio's lines name its own settings (`share=True` in `launch()`)
            footer_links=["gradio"],
            css=CSS,
        )
    except (
        OSError
    ):  # taken since the check; Gradio's message names its own settings (GRADIO_SERVER_PORT)
        sys.exit(_port_error(args.host, args.port))
    print(_address_line(url, share_url), flush=True)
    if block:
        demo.block_thread()
    return demo, url


def _address_line(url, share_url=None):
    """The one line the app prints when it serves."""
    if share_url:
        return f"keras_ddpm app: open {url} here, or {share_url} anywhere (Ctrl-C stops it)"
    return f"keras_ddpm app: open {url} in a browser (Ctrl-C stops it; --share makes a public link)"


def _check_port(host, port):
    """Exits with one sentence unless a server can bind `host:port` now."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind((host, port))
    except OSError:
        sys.exit(_port_error(host, port))


def _port_error(host, port):
    return (
        f"error: Cannot serve on {host}:{port}: the port is in use (or the address is not this "
        "machine's); choose another --port."
    )


if __name__ == "__main__":
    main()
