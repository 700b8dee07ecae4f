"""Teaching a concept (textual inversion): only the word's vectors learn, seeded and resumable;
the teach_concept job streams progress and previews, cancels, resumes, and saves a word that
the next job reads."""

import os
import sys

import numpy as np
import pytest
import torch

from dream_addon import protocol
from generator_backend import teach as teach_module
from generator_backend.core import Cancelled
from generator_backend.teach import Teacher, TeachSettings
from tests.backend.conftest import as_components, load_pipe
from tests.backend.test_server import connect, events_until_terminal

SIZE = 64


def concept_images(count=3, seed=0):
    """Teal textures: a colour the tiny models' vocabulary has no word for."""
    rng = np.random.default_rng(seed)
    base = np.array([0.0, 0.5, 0.5], np.float32)
    return [np.clip(base + rng.normal(0, 0.05, (SIZE, SIZE, 3)), 0, 1).astype(np.float32) for _ in range(count)]


def settings(**kw):
    values = dict(word="tealy", initializer="red bricks", steps=6, learning_rate=5e-3, vectors=2, preview_every=0,
                  seed=1, width=SIZE, height=SIZE)
    return TeachSettings(**{**values, **kw})


def teach(c, s, checkpoint=None, stop_at=None, saved=None):
    def on_step(step, loss):
        if step == stop_at:
            raise Cancelled()

    teacher = Teacher(c, s, [torch.from_numpy(i) for i in concept_images()], checkpoint)
    vectors, image = teacher.run(on_step, lambda step, image: None, (saved if saved is not None else []).append)
    return vectors[""] if "" in vectors else vectors, image, teacher


@pytest.fixture(scope="module")
def tiny(models_dir):
    return as_components(load_pipe(models_dir, "tiny"))


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_only_the_words_vectors_learn(tiny):
    before = {name: state(getattr(tiny, name)) for name in ("unet", "vae", "text_encoder")}
    tokens_before = len(tiny.tokenizer)
    embedding = tiny.text_encoder.get_input_embeddings()
    rows, image, teacher = teach(tiny, settings())
    assert tiny.text_encoder.get_input_embeddings() is embedding  # the stand-in is removed again
    assert len(tiny.tokenizer) == tokens_before  # the shared tokenizer is not touched while teaching
    for name, snapshot in before.items():
        after = state(getattr(tiny, name))
        assert all(torch.equal(after[k], v) for k, v in snapshot.items()), name
    start = embedding.weight[tiny.tokenizer("red bricks", add_special_tokens=False).input_ids]
    assert rows.shape == (2, 32) and (rows - start).abs().max() > 1e-4
    assert len(teacher.losses) == 6 and all(np.isfinite(teacher.losses))
    assert image.shape == (SIZE, SIZE, 3)


def test_teaching_is_seeded(tiny):
    a, b, c = teach(tiny, settings())[0], teach(tiny, settings())[0], teach(tiny, settings(seed=2))[0]
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_a_resumed_teaching_ends_where_an_uninterrupted_one_does(tiny):
    whole = teach(tiny, settings())[0]
    saved = []
    with pytest.raises(Cancelled):
        teach(tiny, settings(), stop_at=3, saved=saved)
    checkpoint = saved[-1]
    assert checkpoint["step"] == 3
    resumed, _, teacher = teach(tiny, settings(), checkpoint=checkpoint)
    assert len(teacher.losses) == 6
    assert torch.equal(resumed, whole)


def test_the_model_says_what_cannot_be_taught(tiny, models_dir):
    from dream_addon.protocol import ProtocolError
    from tests.backend.test_sdxl import load_xl

    xl = load_xl(models_dir, "tiny-xl")[1]
    for c, s, field in [(tiny, settings(word="brick"), "params.word"), (xl, settings(word="brick"), "params.word")]:
        with pytest.raises(ProtocolError) as error:
            teach(c, s)
        assert error.value.field == field


@pytest.mark.parametrize("params, arrays, field", [
    ({"word": "Two Words"}, 3, "params.word"),
    ({"word": "ok"}, 2, "arrays.concept_0"),
    ({"word": "ok"}, 11, "arrays.concept_0"),
    ({"word": "ok", "train_steps": 0}, 3, "params.train_steps"),
    ({}, 3, "params.word"),
])
def test_bad_teach_jobs_are_refused_before_anything_runs(params, arrays, field):
    images = {f"concept_{i}": concept_images(1)[0] for i in range(min(arrays, 10))}
    if arrays > 10:
        images["concept_10"] = images["concept_0"]
    with pytest.raises(protocol.ProtocolError) as error:
        protocol.validate_job("teach_concept", {"width": SIZE, "height": SIZE, **params}, images)
    assert error.value.field == field or (arrays > 10 and error.value.field == "arrays.concept_10")


@pytest.fixture(scope="module")
def teach_backend(tmp_path_factory, models_dir):
    """A backend whose models folder is a fresh one (its embeddings/ starts empty), with the tiny models."""
    from dream_addon.supervisor import BackendProcess

    folder = tmp_path_factory.mktemp("models")
    for name in ("tiny", "tiny-xl"):
        os.symlink(models_dir / name, folder / name)
    process = BackendProcess(sys.executable, 0, models=("tiny", "tiny-xl"), output_dir=tmp_path_factory.mktemp("out"),
                             device="cpu", max_restarts=0, extra_args=["--models-dir", str(folder), "--preload"])
    process.start()
    assert process.wait_ready(120), "\n".join(process.tail)
    process.models_folder = folder
    yield process
    process.stop()


def submit_teach(conn, job_id, params, resume=False):
    arrays = {f"concept_{i}": (image * 255).round().astype(np.uint8) for i, image in enumerate(concept_images())}
    conn.send({"type": "submit", "job_id": job_id, "kind": "teach_concept", "params": params, "resume": resume},
              arrays)


def test_teach_job_streams_saves_the_word_and_the_next_job_reads_it(teach_backend):
    conn = connect(teach_backend)
    params = {"word": "tealy", "train_steps": 4, "preview_every": 2, "width": SIZE, "height": SIZE, "seed": 4,
              "vectors": 2, "initializer": "red bricks"}  # the chosen initializer's cost is not this test's
    submit_teach(conn, "teach-1", params)
    events = events_until_terminal(conn, "teach-1")
    kinds = [m["type"] for m, _ in events]
    previews = [(m["step"], a["image"].shape) for m, a in events if m["type"] == "preview"]
    assert previews == [(2, (SIZE, SIZE, 4)), (4, (SIZE, SIZE, 4))]
    assert any(m["type"] == "progress" and m.get("stage") == "teach" and "loss" in m for m, _ in events)
    result, arrays = events[-1]
    assert kinds[-1] == "result" and (result["word"], result["initializer"]) == ("tealy", "red bricks")
    path = teach_backend.models_folder / "embeddings" / "tealy.safetensors"
    assert result["embedding"] == str(path) and path.exists()
    # Usable at once: a txt2img job of the word alone is the teaching's last preview, bit for bit.
    conn.send({"type": "submit", "job_id": "use-1", "params": {"prompt": "tealy", "width": SIZE, "height": SIZE,
                                                                 "seed": 4, "preview_interval": 0.0}})
    used = events_until_terminal(conn, "use-1")
    assert used[-1][0]["type"] == "result"
    assert not [m for m, _ in used if m["type"] == "warning"]
    np.testing.assert_array_equal(used[-1][1]["image"], arrays["image"])
    conn.send({"type": "submit", "job_id": "use-2", "params": {"prompt": "red", "width": SIZE, "height": SIZE,
                                                                 "seed": 4, "preview_interval": 0.0, "steps": 4}})
    assert np.abs(events_until_terminal(conn, "use-2")[-1][1]["image"].astype(float)
                  - arrays["image"]).max() > 0
    # An SDXL model skips the SD-shaped word, saying so once.
    conn.send({"type": "submit", "job_id": "use-xl", "params": {"prompt": "tealy", "width": SIZE, "height": SIZE,
                                                                  "model": "tiny-xl", "preview_interval": 0.0,
                                                                  "steps": 2}})
    xl = events_until_terminal(conn, "use-xl")
    warnings = [m for m, _ in xl if m["type"] == "warning"]
    assert xl[-1][0]["type"] == "result" and [w["code"] for w in warnings] == ["embedding_skipped"]
    conn.close()


def test_teach_job_cancels_and_resumes_from_its_checkpoint(teach_backend):
    conn = connect(teach_backend)
    params = {"word": "tealz", "train_steps": 40, "preview_every": 0, "width": SIZE, "height": SIZE, "seed": 4,
              "initializer": "red bricks"}
    submit_teach(conn, "teach-2", params)
    while True:
        message, _ = conn.recv()
        if message.get("type") == "progress" and message.get("stage") == "teach":
            conn.send({"type": "cancel", "job_id": "teach-2"})
            break
    events = events_until_terminal(conn, "teach-2")
    assert events[-1][0]["type"] == "cancelled"
    stopped = events[-1][0]["step"]
    assert 0 < stopped < 40
    job_dir = os.path.join(teach_backend.ready_info["output_dir"], "teach-2")
    assert os.path.exists(os.path.join(job_dir, "concept_checkpoint.pt"))
    assert not (teach_backend.models_folder / "embeddings" / "tealz.safetensors").exists()
    params_short = dict(params)
    submit_teach(conn, "teach-2", params_short, resume=True)
    events = events_until_terminal(conn, "teach-2")
    steps = [m["step"] for m, _ in events if m["type"] == "progress" and m.get("stage") == "teach"]
    assert steps and steps[0] > stopped  # continued, not started again
    assert events[-1][0]["type"] == "result"
    assert (teach_backend.models_folder / "embeddings" / "tealz.safetensors").exists()
    conn.close()


def test_an_sdxl_teach_job_saves_a_word_the_next_sdxl_job_reads(teach_backend):
    conn = connect(teach_backend)
    params = {"word": "tealxl", "train_steps": 2, "preview_every": 0, "width": SIZE, "height": SIZE, "seed": 4,
              "vectors": 2, "initializer": "red bricks", "model": "tiny-xl"}
    submit_teach(conn, "teach-xl", params)
    result, arrays = events_until_terminal(conn, "teach-xl")[-1]
    assert result["type"] == "result" and result["model"] == "tiny-xl"
    from safetensors.torch import load_file

    saved = load_file(result["embedding"])
    assert {k: v.shape[0] for k, v in saved.items()} == {"clip_l": 2, "clip_g": 2}
    conn.send({"type": "submit", "job_id": "use-xl-word", "params": {
        "prompt": "tealxl", "width": SIZE, "height": SIZE, "seed": 4, "preview_interval": 0.0, "model": "tiny-xl",
        "steps": teach_module.PREVIEW_STEPS}})
    used = events_until_terminal(conn, "use-xl-word")
    assert used[-1][0]["type"] == "result" and not [m for m, _ in used if m["type"] == "warning"]
    np.testing.assert_array_equal(used[-1][1]["image"], arrays["image"])  # the word reads as it was taught
    conn.close()


@pytest.mark.parametrize("change", [{"initializer": "red"}, {"initializer": ""}, {"learning_rate": 1e-2}, {"seed": 2}, {"steps": 5},
                                    {"vectors": 1}])
def test_every_setting_changes_the_word(tiny, change):
    """No dead controls: each Teach a Concept setting changes the vectors learned."""
    base = teach(tiny, settings())[0]
    changed = teach(tiny, settings(**change))[0]
    assert changed.shape != base.shape or (changed - base).abs().max() > 1e-6


def test_previews_come_every_n_steps_and_at_the_end(tiny):
    seen = []
    teacher = Teacher(tiny, settings(preview_every=2, steps=5), [torch.from_numpy(i) for i in concept_images()])
    teacher.run(lambda step, loss: None, lambda step, image: seen.append(step), lambda state: None)
    assert seen == [2, 4, 5]


def test_an_initializer_starts_each_vector_at_its_token_or_its_word(tiny):
    from generator_backend.teach import initial_rows

    weight = tiny.text_encoder.get_input_embeddings().weight
    ids = tiny.tokenizer("red bricks", add_special_tokens=False).input_ids
    assert len(ids) == 2
    assert torch.equal(initial_rows(tiny.tokenizer, tiny.text_encoder, "red bricks", 2), weight[ids])
    three = initial_rows(tiny.tokenizer, tiny.text_encoder, "red bricks", 3)
    assert torch.equal(three, weight[ids].mean(0).expand(3, -1))
    green = tiny.tokenizer("green", add_special_tokens=False).input_ids
    assert len(green) > 1  # "green" is several tokens: as one of two words its vector is their mean
    two = initial_rows(tiny.tokenizer, tiny.text_encoder, "green bricks", 2)
    assert torch.equal(two, torch.stack([weight[green].mean(0), weight[ids[1]]]))


def test_an_automatic_word_starts_as_exactly_the_phrase_chosen_for_it(tiny):
    """Empty initializer and 0 vectors (the defaults): the word gets one vector per token of the chosen
    phrase and starts at their rows; a resumed teaching keeps that phrase and that count."""
    auto = settings(initializer="", vectors=0)
    teacher = Teacher(tiny, auto, [torch.from_numpy(i) for i in concept_images()])
    ids = tiny.tokenizer(teacher.initializer, add_special_tokens=False).input_ids
    words = teacher.initializer.split()
    assert len(words) == 2 and set(words) <= set(teach_module.CANDIDATE_WORDS)
    assert teacher.settings.vectors == len(ids)
    assert torch.equal(teacher.rows[""], tiny.text_encoder.get_input_embeddings().weight[ids])
    saved = []

    def stop(step, loss):
        if step == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        teacher.run(stop, lambda step, image: None, saved.append)
    resumed = Teacher(tiny, auto, [torch.from_numpy(i) for i in concept_images()], saved[-1])
    assert (resumed.initializer, resumed.settings.vectors) == (teacher.initializer, teacher.settings.vectors)


def test_choosing_the_initializer_reports_progress_and_stops_on_cancel(tiny):
    """The automatic initializer makes an image per candidate word: each denoising step reports how many
    are made, and Stop there ends it within that step (no image of the next word is started)."""
    calls = []

    def on_choose(made, planned):
        calls.append((made, planned))
        if made == teach_module.CHOOSE_SEEDS:  # the first word's images are done
            raise Cancelled()

    with pytest.raises(Cancelled):
        Teacher(tiny, settings(initializer="", vectors=0), [torch.from_numpy(i) for i in concept_images()],
                on_choose=on_choose)
    planned = len(teach_module.CANDIDATE_WORDS) * teach_module.CHOOSE_SEEDS
    assert calls[0] == (0, planned) and calls[-1] == (teach_module.CHOOSE_SEEDS, planned)
    assert len(calls) == teach_module.CHOOSE_SEEDS * teach_module.CHOOSE_STEPS + 1


def test_the_chosen_initializer_names_what_the_images_show(models_dir):
    """On the pocket model (which ships its vocabulary), images of a known pattern get its word."""
    from generator_backend import pocket_dataset as ds
    from generator_backend.models import ModelManager

    models = ModelManager(["pocket"], device="cpu")
    c = models.get("pocket")
    images = [torch.from_numpy(ds.render("blue", "checker", SIZE, seed=k)) for k in range(3)]
    teacher = Teacher(c, settings(initializer="", vectors=0), images, vocabulary=models.vocabulary("pocket"))
    assert "checker" in teacher.initializer.split(), teacher.initializer
    assert set(teacher.initializer.split()) <= models.vocabulary("pocket")


@pytest.fixture(scope="module")
def tiny_xl(models_dir):
    from tests.backend.test_sdxl import load_xl

    return load_xl(models_dir, "tiny-xl")[1]


def test_sdxl_teaching_learns_both_encoders_is_seeded_and_resumes_exactly(tiny_xl):
    modules = ("unet", "vae", "text_encoder", "text_encoder_2")
    before = {name: state(getattr(tiny_xl, name)) for name in modules}
    whole, _, _ = teach(tiny_xl, settings())
    assert set(whole) == {"clip_l", "clip_g"}
    for key, encoder in (("clip_l", tiny_xl.text_encoder), ("clip_g", tiny_xl.text_encoder_2)):
        ids = tiny_xl.tokenizer("red bricks", add_special_tokens=False).input_ids
        start = encoder.get_input_embeddings().weight[ids]
        assert whole[key].shape == start.shape and (whole[key] - start).abs().max() > 1e-4, key
    for name, snapshot in before.items():
        after = state(getattr(tiny_xl, name))
        assert all(torch.equal(after[k], v) for k, v in snapshot.items()), name
    again, other = teach(tiny_xl, settings())[0], teach(tiny_xl, settings(seed=2))[0]
    assert all(torch.equal(whole[k], again[k]) for k in whole) and not torch.equal(whole["clip_g"], other["clip_g"])
    saved = []
    with pytest.raises(Cancelled):
        teach(tiny_xl, settings(), stop_at=4, saved=saved)
    assert saved[-1]["step"] == 4  # a cancel leaves a resumable state
    resumed = teach(tiny_xl, settings(), checkpoint=saved[-1])[0]
    assert all(torch.equal(resumed[k], whole[k]) for k in whole)


def test_an_sdxl_word_saves_in_the_sdxl_format_and_works_at_once(tmp_path, models_dir):
    from generator_backend.core import GenerationRequest, generate
    from generator_backend.embeddings import EmbeddingLibrary, read_embedding
    from generator_backend.teach import save_embedding
    from tests.backend.test_sdxl import load_xl

    xl = load_xl(models_dir, "tiny-xl")[1]  # its own copy: the word is added to it
    vectors, preview, _ = teach(xl, settings())
    path = save_embedding(tmp_path, "tealy", vectors)
    word, read = read_embedding(path)
    assert word == "tealy" and set(read) == {"clip_l", "clip_g"}
    assert all(torch.equal(read[k], vectors[k]) for k in vectors)
    request = GenerationRequest(prompt="tealy", negative_prompt="", seed=1, steps=teach_module.PREVIEW_STEPS,
                                width=SIZE, height=SIZE)
    unknown = generate(xl, request)
    assert EmbeddingLibrary(tmp_path).apply(xl) == []
    known = generate(xl, request)
    assert torch.equal(known, preview)  # the word reads as it was taught
    assert (known - unknown).abs().max() > 1e-3  # and its tokens change the image
