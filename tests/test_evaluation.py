"""keras_ddpm.evaluation: `python cli.py eval`'s pipeline, which samples through the same
`SampleRequest` as `python cli.py sample`."""

import dataclasses
import json

import keras
import pytest
from click.testing import CliRunner
from fid_testing import tiny_extractor
from fid_testing import write_images

from keras_ddpm import DiffusionModel
from keras_ddpm import evaluation
from keras_ddpm import fid
from keras_ddpm import samplers
from keras_ddpm.cli import cli
from keras_ddpm.evaluation import EvalConfig


def tiny_inception(features="inception-2015", weights=None, resize="clean", batch_size=4):
    """`fid.feature_extractor`'s stand-in."""
    return tiny_extractor(batch_size=batch_size)


pytestmark = pytest.mark.once  # the eval pipeline is backend-free (tests/backend/test_isolation.py)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    DiffusionModel.from_preset("tiny", seed=0).save(path)
    return path


def test_a_folder_against_itself_scores_zero(tmp_path, monkeypatch):
    monkeypatch.setattr(fid, "feature_extractor", tiny_inception)
    images = write_images(tmp_path / "images", 6)
    messages = []
    config = EvalConfig(
        gen_data_dir=images,
        real_data_dir=images,
        num_images=6,
        batch_size=4,
        use_cache=False,
        kid_subsets=3,
        kid_subset_size=4,
    )
    record = evaluation.evaluate(config, echo=messages.append)
    assert messages == [f"generated images from {images} (16x16x1)", f"real images from {images}"]
    assert record["num_generated"] == record["num_real"] == 6
    # The same features on both sides: FID is 0; KID (unbiased, over random subsets, so it may dip
    # below 0) is 0 within its spread over the subsets.
    assert record["fid"] == pytest.approx(0.0, abs=1e-6)
    assert abs(record["kid"]) <= 3 * record["kid_std"] + 1e-6
    assert record["sampling"] is None and record["image_shape"] == [16, 16, 1]
    assert record["reference_cache"] is None and record["inception_weights"] == "tiny-test"
    assert record["features"] == "custom" and record["resize"] == "clean"
    assert record["backend"] == keras.backend.backend()
    assert record["note"] == fid.note("custom", "clean")
    darker = write_images(tmp_path / "darker", 6, seed=1, high=64)
    different = evaluation.evaluate(dataclasses.replace(config, real_data_dir=darker), echo=print)
    assert different["fid"] > 1e-2


def test_sources_are_checked_before_any_work():
    with pytest.raises(
        ValueError, match="exactly one of --dataset NAME, --real-data-dir DIR or --real-stats FILE"
    ):
        EvalConfig(model_path="m.keras").check_sources()
    with pytest.raises(ValueError, match="Pass --model PATH"):
        EvalConfig(dataset="mnist_5k").check_sources()


def test_eval_draws_with_the_plan_that_sample_uses(model_path, tmp_path, monkeypatch):
    """`eval --sampler dpm_solver` (no --steps, --skip) takes `sample`'s defaults: 20 steps
    spaced in log-SNR, and its record says so."""
    plans = []
    make_plan = samplers.make_plan

    def recorded(*args, **kwargs):
        plan = make_plan(*args, **kwargs)
        plans.append(plan.timesteps.tolist())
        return plan

    monkeypatch.setattr(samplers, "make_plan", recorded)
    # The chains are not run (x_T comes back as the sample): only their plans matter here.
    monkeypatch.setattr(samplers, "run_plan", lambda run, x, plan, *args, **kwargs: (x, x))
    monkeypatch.setattr(fid, "feature_extractor", tiny_inception)
    sample_args = ["sample", "--model", model_path, "--sampler", "dpm_solver", "--batch-size", "2"]
    result = CliRunner().invoke(cli, [*sample_args, "--save-path", str(tmp_path / "grid.png")])
    assert result.exit_code == 0, result.output
    sampled, plans[:] = plans[-1], []
    real = write_images(tmp_path / "real", 2)
    output = tmp_path / "eval.json"
    eval_args = ["eval", "--model", model_path, "--sampler", "dpm_solver", "--real-data-dir", real]
    eval_args += ["--n-eval-imgs", "2", "--batch-size", "2", "--no-cache", "--kid-subsets", "2"]
    result = CliRunner().invoke(cli, [*eval_args, "--output", str(output)])
    assert result.exit_code == 0, result.output
    schedule = DiffusionModel.from_preset("tiny").schedule
    assert sampled == samplers.logsnr_timesteps(schedule, 20).tolist()
    assert plans and all(plan == sampled for plan in plans)
    record = json.loads(output.read_text())
    assert record["sampling"] == {
        "sampler": "dpm_solver",
        "steps": 20,
        "eta": 0.0,
        "skip": "logsnr",
        "variance": "fixed_small",
        "guidance": 0.0,
    }
    # --skip takes every spacing `sample` does.
    ddim_logsnr = ["--skip", "logsnr", "--sampler", "ddim", "--steps", "5"]
    result = CliRunner().invoke(cli, [*eval_args, *ddim_logsnr, "--output", str(output)])
    assert result.exit_code == 0, result.output
    assert plans[-1] == samplers.logsnr_timesteps(schedule, 5).tolist()
