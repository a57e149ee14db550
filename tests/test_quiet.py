"""TensorFlow's C++ start-up lines stay off the terminal of every command unless -v is given."""

import subprocess
import sys

import pytest
from conftest import REPO

from keras_ddpm.backend import child_environment


def stderr_of(*argv):
    env = child_environment("tensorflow")
    env.pop("TF_CPP_MIN_LOG_LEVEL")  # as a user's shell has it
    result = subprocess.run(
        [sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stderr


@pytest.mark.once(lane="tensorflow")  # its commands run on TensorFlow whatever the lane
@pytest.mark.slow
def test_commands_on_tensorflow_print_no_start_up_logs():
    # Without the quiet import TensorFlow writes its oneDNN and CUDA lines (the control)...
    assert "oneDNN" in stderr_of("-c", "import tensorflow")
    # ...and a command on the TensorFlow backend, which loads it through Keras, writes nothing
    # (the same import hook catches tf.data's later import under the other backends).
    assert stderr_of("cli.py", "info", "--preset", "tiny") == ""
