"""Fixtures for backend tests: the tiny model, built once, and a real backend process."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    from generator_backend.tiny_model import ensure_tiny_model

    path = Path(os.environ.get("DREAM_MODELS_DIR") or tmp_path_factory.mktemp("models"))
    for name in ("tiny", "tiny-b", "tiny-inpaint"):
        ensure_tiny_model(path, name)
    return path


def load_pipe(models_dir, name):
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging

    logging.disable_progress_bar()
    pipe = StableDiffusionPipeline.from_pretrained(models_dir / name)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def as_components(pipe):
    import torch

    from generator_backend.core import Components

    return Components.from_pipeline(pipe, "cpu", torch.float32)


@pytest.fixture(scope="session")
def tiny_pipe(models_dir):
    return load_pipe(models_dir, "tiny")


@pytest.fixture(scope="session")
def components(tiny_pipe):
    return as_components(tiny_pipe)


@pytest.fixture(scope="session")
def inpaint_pipe(models_dir):
    return load_pipe(models_dir, "tiny-inpaint")


@pytest.fixture(scope="session")
def components_b(models_dir):
    return as_components(load_pipe(models_dir, "tiny-b"))


@pytest.fixture(scope="module")
def backend(tmp_path_factory, models_dir):
    """A real `python -m generator_backend serve` process on a free loopback port."""
    from dream_addon.supervisor import BackendProcess

    out = tmp_path_factory.mktemp("outputs")
    process = BackendProcess(sys.executable, 0, models=("tiny", "tiny-b", "tiny-inpaint"), output_dir=out, device="cpu",
                             max_restarts=0,
                             extra_args=["--models-dir", str(models_dir), "--preload"])
    process.start()
    assert process.wait_ready(120), "\n".join(process.tail)
    yield process
    process.stop()
