"""Every `python cli.py ...` command in README.md and docs/ is one the CLI accepts as written, and
the cheap ones run (`info`, and `sample` of the shipped model with tiny settings).

Commands are read from the Markdown code blocks (indented or fenced): continuation lines are
joined, `# comments` and leading `VAR=value` assignments dropped, `a && b` split, and a shell
loop's variable given its first value. Synopsis lines (`[optional]` parts, `a | b`) are not
commands.
"""

import glob
import os
import re
import shlex

import click
import pytest
from click.testing import CliRunner
from conftest import REPO

from keras_ddpm.cli import cli

pytestmark = pytest.mark.once  # the CLI is backend-free (tests/backend/test_isolation.py)

DOCUMENTS = ["README.md", *sorted(glob.glob("docs/*.md", root_dir=REPO))]
PROGRAMS = ("python cli.py", "keras-ddpm")
# Appended to a cheap command so that it runs in seconds (click keeps an option's last value).
TINY = {"sample": ["--steps", "2", "--batch-size", "2"]}


def code_lines(text):
    """The lines of `text`'s code blocks: indented by 4 spaces after a blank line, or fenced."""
    fenced, previous_blank, indented = False, True, False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            yield line.strip()
            continue
        indented = line.startswith("    ") and (indented or previous_blank)
        if indented:
            yield line.strip()
        previous_blank = not line.strip()


def documented_commands():
    """(document:line, argv after the program name) for each documented command."""
    for document in DOCUMENTS:
        text = open(os.path.join(REPO, document), encoding="utf-8").read()
        lines = list(code_lines(text))
        joined, pending = [], ""
        for line in lines:
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            joined.append(pending + line)
            pending = ""
        loop_values = {}  # `for steps in 10 20 ...; do`: $steps is 10
        for line in joined:
            loop = re.match(r"for (\w+) in (\S+)", line)
            if loop:
                loop_values[loop[1]] = loop[2]
            line = re.sub(r"\$(\w+)", lambda m: loop_values.get(m[1], m[0]), line)
            for part in re.split(r"&&|;", line):
                if not any(program in part for program in ("cli.py", "keras-ddpm")):
                    continue  # prose, Python, other programs
                words = shlex.split(part, comments=True)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words.pop(0)
                command = " ".join(words)
                program = next((p for p in PROGRAMS if command.startswith(p + " ")), None)
                if program is None or "[" in part or " | " in part:
                    continue
                yield document, shlex.split(command[len(program) :])


COMMANDS = list(documented_commands())


def parse(argv):
    """Parses `argv` as the CLI would, without running it. A path that must exist and does not
    is fine (the docs name files the reader makes); any other usage error is raised."""
    with cli.make_context("cli", list(argv), resilient_parsing=False) as context:
        name, command, rest = cli.resolve_command(context, context.protected_args + context.args)
        try:
            command.make_context(name, rest, parent=context)
        except click.BadParameter as error:
            if "does not exist" not in error.format_message():
                raise


def test_the_documents_have_commands():
    assert len(COMMANDS) >= 20
    assert {argv[0] for _, argv in COMMANDS} >= {"train", "sample", "eval", "info", "convert"}


@pytest.mark.parametrize(
    "argv", [argv for _, argv in COMMANDS], ids=[f"{d}:{' '.join(a)[:60]}" for d, a in COMMANDS]
)
def test_every_documented_command_parses(argv):
    parse(argv)


def cheap(argv):
    """Whether `argv` runs in seconds here: `info` of a preset or of the shipped model, or
    `sample` of the shipped model in the normal or inpainting mode (the other modes read the
    dataset or draw many images; tests/test_sampling_modes.py runs each through the CLI)."""
    model = argv[argv.index("--model") + 1] if "--model" in argv else "saved_models"
    if not model.startswith("saved_models"):
        return False
    mode = argv[argv.index("--mode") + 1] if "--mode" in argv else "normal"
    return argv[0] == "info" or (
        argv[0] == "sample" and mode in ("normal", "inpainting") and "--n-images" not in argv
    )


def test_the_cheap_documented_commands_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative outputs land here
    os.symlink(os.path.join(REPO, "saved_models"), tmp_path / "saved_models")
    runs = [argv for _, argv in COMMANDS if cheap(argv)]
    assert sum(argv[0] == "sample" for argv in runs) >= 2
    for argv in runs:
        result = CliRunner().invoke(cli, [*argv, *TINY.get(argv[0], [])])
        assert result.exit_code == 0, (argv, result.output)
