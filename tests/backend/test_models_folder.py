"""The models folder over the socket: the welcome's listing, rescan, LoRAs by name, and the folder's bounds."""

import shutil
import sys

import numpy as np
import pytest

from dream_addon import protocol
from generator_backend import model_library
from generator_backend.checkpoint_convert import save_single_file
from generator_backend.model_library import ModelLibrary
from generator_backend.models import ModelManager
from generator_backend.tiny_lora import build_lora
from tests.backend.test_server import connect, events_until_terminal

SMALL = {"prompt": "red bricks", "steps": 3, "width": 64, "height": 64, "seed": 9, "preview_interval": 0,
         "model": "tiny"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, models_dir):
    root = tmp_path_factory.mktemp("models-folder")
    shutil.copytree(models_dir / "tiny", root / "tiny")
    tiny = ModelManager(["tiny"], device="cpu", models_dir=models_dir).get()
    build_lora(tiny, root / "Lora" / "bricks.safetensors", seed=4, text_encoder=True)
    build_lora(tiny, root / "Lora" / "words.safetensors", seed=5, scale=0.5, text_encoder=True, unet=False)
    return root


@pytest.fixture(scope="module")
def served(folder, tmp_path_factory):
    from dream_addon.supervisor import BackendProcess

    process = BackendProcess(sys.executable, 0, models=("tiny",), output_dir=tmp_path_factory.mktemp("out"),
                             device="cpu", max_restarts=0, extra_args=["--models-dir", str(folder)])
    process.start()
    assert process.wait_ready(120), "\n".join(process.tail)
    yield process
    process.stop()


def submit(conn, job_id, params):
    conn.send({"type": "submit", "job_id": job_id, "params": params})
    return events_until_terminal(conn, job_id)


def test_the_welcome_lists_the_folder_and_a_rescan_finds_a_new_file(served, folder):
    conn = connect(served)
    library = conn.welcome["library"]
    assert [e["name"] for e in library["loras"]] == ["Lora/bricks", "Lora/words"] and library["embeddings"] == []
    assert conn.welcome["models"][0] == {"name": "tiny", "default": True, "family": "tiny/unet4", "size": 256,
                                         "base": "sd1", "kind": "txt2img"}
    assert {"checkpoints", "loras", "embeddings", "upscalers"} <= set(library)
    assert [e["name"] for e in library["checkpoints"]] == ["tiny"]
    assert library["checkpoints"][0]["format"] == "diffusers"
    assert all("path" not in e for kind in ("checkpoints", "loras") for e in library[kind])
    save_single_file(folder / "tiny", folder / "dropped.safetensors")  # added while the backend runs
    try:
        conn.send({"type": "rescan"})
        message, _ = conn.recv()
        assert message["type"] == "library" and [m["name"] for m in message["models"]] == ["tiny"]  # the served
        dropped = next(e for e in message["library"]["checkpoints"] if e["name"] == "dropped")
        assert (dropped["family"], dropped["kind"], dropped["format"], dropped["architecture"]) == \
            ("sd1", "txt2img", "safetensors", "tiny")
        plain = submit(conn, "mf-plain", SMALL)[-1]
        single = submit(conn, "mf-single", dict(SMALL, model="dropped"))[-1]
        assert single[0]["type"] == "result", single[0]
        np.testing.assert_array_equal(single[1]["image"], plain[1]["image"])
        conn.send({"type": "rescan", "types": "dropped=sd2"})  # the user says: a v-prediction SD 2 model
        entry = next(e for e in conn.recv()[0]["library"]["checkpoints"] if e["name"] == "dropped")
        assert (entry["family"], entry["detected_family"]) == ("sd2", "sd1")
        as_sd2 = submit(conn, "mf-sd2", dict(SMALL, model="dropped"))[-1]
        assert as_sd2[0]["type"] == "result" and not np.array_equal(as_sd2[1]["image"], plain[1]["image"])
        conn.send({"type": "rescan", "types": "dropped=sd9"})
        refused = conn.recv()[0]
        assert refused["type"] == "error" and refused["field"] == "types" and "sd2-base" in refused["message"]
        conn.send({"type": "rescan", "types": ""})
        conn.recv()
        np.testing.assert_array_equal(submit(conn, "mf-sd1", dict(SMALL, model="dropped"))[-1][1]["image"],
                                      plain[1]["image"])  # reloaded as detected
    finally:
        (folder / "dropped.safetensors").unlink()
        conn.send({"type": "rescan"})
        assert "dropped" not in [e["name"] for e in conn.recv()[0]["library"]["checkpoints"]]
    conn.close()


def test_loras_by_name_over_the_socket(served):
    conn = connect(served)
    plain = submit(conn, "lo-0", SMALL)[-1][1]["image"]
    zero = submit(conn, "lo-1", dict(SMALL, loras=[{"name": "Lora/bricks", "weight": 0.0}]))[-1]
    assert zero[0]["type"] == "result", zero[0]
    np.testing.assert_array_equal(zero[1]["image"], plain)
    strong = submit(conn, "lo-2", dict(SMALL, loras=[{"name": "Lora/bricks"}], lora_fuse=True))[-1]
    assert strong[0]["type"] == "result" and not np.array_equal(strong[1]["image"], plain)
    np.testing.assert_array_equal(submit(conn, "lo-3", SMALL)[-1][1]["image"], plain)  # restored
    conn.close()


def test_a_text_encoder_lora_reaches_a_prompts_walk(served):
    """A prompts walk encodes its prompts before its frames' core runs: the LoRAs are held around it all.
    Guidance 1: no negative row, so the walk's own embeddings are the only text the LoRA can change."""
    conn = connect(served)
    walk = {"walk": "prompts", "walk_prompts": ["red bricks", "blue waves"], "frames": 2, "batch_size": 2,
            "steps": 2, "guidance": 1.0, "width": 64, "height": 64, "model": "tiny", "preview_interval": 0}
    conn.send({"type": "submit", "job_id": "w-0", "kind": "walk", "params": walk})
    plain = events_until_terminal(conn, "w-0")[-1]
    conn.send({"type": "submit", "job_id": "w-1", "kind": "walk",
               "params": dict(walk, loras=[{"name": "Lora/words"}])})
    with_lora = events_until_terminal(conn, "w-1")[-1]
    assert plain[0]["type"] == with_lora[0]["type"] == "result", with_lora[0]
    assert np.abs(with_lora[1]["image"] - plain[1]["image"]).max() > 1e-3
    conn.close()


@pytest.mark.parametrize("loras,field", [
    ([{"name": "Lora/nope"}], "params.loras[0].name"),
    ([{"name": "Lora/bricks", "weight": 9}], "params.loras[0].weight"),
    ([{"name": "Lora/bricks"}, {"name": "Lora/bricks"}], "params.loras[1].name"),
    ([{"name": "tiny"}], "params.loras[0].name"),  # a checkpoint is no LoRA
    ([], "params.loras"),
    ([{"name": f"x{i}"} for i in range(protocol.MAX_LORAS + 1)], "params.loras"),
])
def test_bad_loras_are_refused_before_anything_is_made(served, loras, field):
    conn = connect(served)
    conn.send({"type": "submit", "job_id": "lo-bad", "params": dict(SMALL, loras=loras)})
    message, _ = conn.recv()
    assert message["type"] == "error" and message["field"] == field and message["job_id"] == "lo-bad", message
    conn.send({"type": "status", "job_id": "lo-bad"})
    assert conn.recv()[0].get("job") is None  # no job was made
    conn.close()


def test_the_listing_never_leaves_the_folder_and_is_bounded(tmp_path, monkeypatch, folder):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(folder / "Lora" / "bricks.safetensors", outside / "secret.safetensors")
    root = tmp_path / "root"
    (root / "deep" / "a" / "b" / "c" / "d").mkdir(parents=True)
    (root / "link.safetensors").symlink_to(outside / "secret.safetensors")
    (root / "linked-folder").symlink_to(outside, target_is_directory=True)
    shutil.copy(outside / "secret.safetensors", root / "deep" / "a" / "b" / "c" / "d" / "too-deep.safetensors")
    shutil.copy(outside / "secret.safetensors", root / ".hidden.safetensors")
    for i in range(5):
        shutil.copy(outside / "secret.safetensors", root / f"l{i}.safetensors")
    library = ModelLibrary(root)
    assert sorted(library.scan()) == [f"l{i}" for i in range(5)]
    monkeypatch.setattr(model_library, "MAX_ENTRIES", 3)
    assert len(library.scan()) == 3 and library.listing()["truncated"] is True
    with pytest.raises(model_library.LibraryError):
        library.get("../outside/secret", "lora")


def test_detection_is_cached_by_mtime_and_size(tmp_path, folder, monkeypatch):
    shutil.copy(folder / "Lora" / "bricks.safetensors", tmp_path / "a.safetensors")
    library = ModelLibrary(tmp_path)
    library.scan()
    reads = []
    original = model_library.read_safetensors_header
    monkeypatch.setattr(model_library, "read_safetensors_header", lambda p: reads.append(p) or original(p))
    library.scan()
    assert reads == []
    save_single_file(folder / "tiny", tmp_path / "a.safetensors")  # replaced by a checkpoint
    assert library.scan()["a"].type == "checkpoint" and len(reads) == 1


def test_model_type_overrides_parse_and_name_the_allowed_values():
    assert model_library.parse_override("mine=sd2-base") == ("mine", "sd2-base", None)
    assert model_library.parse_override("a/b=sd1/inpaint") == ("a/b", "sd1", "inpaint")
    for bad in ("mine=sd3", "mine=sd1/video", "=sd1"):
        with pytest.raises(ValueError, match="sd2-base"):
            model_library.parse_override(bad)
