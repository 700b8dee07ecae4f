"""LoRA as a technique: made here with peft on the tiny model, in diffusers/peft and kohya layouts."""

import pytest
import torch

from generator_backend.core import GenerationRequest, generate
from generator_backend.models import ModelManager
from generator_backend.techniques import lora
from generator_backend.techniques.lora import LoraTerm
from generator_backend.tiny_lora import build_lora
from dream_addon.protocol import ProtocolError


@pytest.fixture(scope="module")
def manager(tmp_path_factory, models_dir):
    """A models folder with three LoRAs of the tiny model (one with a text-encoder part, one in kohya's layout)."""
    import shutil

    root = tmp_path_factory.mktemp("loras")
    shutil.copytree(models_dir / "tiny", root / "tiny")
    shutil.copytree(models_dir / "tiny-b", root / "tiny-b")
    plain = ModelManager(["tiny"], device="cpu", models_dir=models_dir).get()
    build_lora(plain, root / "Lora" / "one.safetensors", seed=1)
    build_lora(plain, root / "Lora" / "two.safetensors", seed=2, text_encoder=True)
    build_lora(plain, root / "Lora" / "kohya.safetensors", seed=2, text_encoder=True, kohya=True)
    return ModelManager(["tiny"], device="cpu", models_dir=root)


def request(loras=(), fuse=False, **kw):
    terms = [LoraTerm(name, weight) for name, weight in loras]
    req = GenerationRequest(**{"prompt": "red bricks", "seed": 5, "steps": 3, "width": 64, "height": 64,
                               "loras": terms, "lora_fuse": fuse, **kw})
    return req


def run(manager, loras=(), fuse=False, **kw):
    req = request(loras, fuse, **kw)
    lora.resolve(req, manager.library)
    return generate(manager.get("tiny"), req)


def state(c):
    return {k: v.clone() for k, v in {**c.unet.state_dict(), **{"te." + k: v for k, v in
                                                               c.text_encoder.state_dict().items()}}.items()}


def test_the_listing_knows_the_loras(manager):
    entries = {e["name"]: e for e in manager.library.listing()["loras"]}
    assert set(entries) == {"Lora/one", "Lora/two", "Lora/kohya"}
    assert entries["Lora/one"]["rank"] == 4 and entries["Lora/kohya"]["format"] == "safetensors"


def test_weight_zero_is_no_lora_and_a_weight_changes_the_result(manager):
    base = run(manager)
    for fuse in (False, True):
        assert torch.equal(run(manager, [("Lora/one", 0.0)], fuse), base)
        assert torch.equal(run(manager, [("Lora/two", 0.0), ("Lora/one", 0.0)], fuse), base)
    changed = run(manager, [("Lora/one", 1.0)])
    assert (changed - base).abs().max() > 1e-3
    assert not torch.equal(run(manager, [("Lora/one", 0.5)]), changed)


def test_fused_equals_unfused_within_rounding(manager):
    # Fused: (W + s·B·A)·x; unfused: W·x + s·B·(A·x): the same maths, summed in another order (fp32).
    for loras in ([("Lora/one", 1.0)], [("Lora/one", 0.7), ("Lora/two", -0.4)]):
        torch.testing.assert_close(run(manager, loras, fuse=True), run(manager, loras, fuse=False),
                                   atol=1e-5, rtol=0)


def test_two_loras_compose_additively_in_weight_space(manager):
    c = manager.get("tiny")
    req = request([("Lora/one", 0.6), ("Lora/two", -1.3)], fuse=True)
    lora.resolve(req, manager.library)
    base = {k: v.clone() for k, v in c.unet.state_dict().items()}
    deltas = {}
    for term in req.loras:  # each LoRA alone, fused at weight 1: its own ΔW
        with lora.active(c, [LoraTerm(term.name, 1.0, term.path)], fuse=True):
            deltas[term.name] = {k: v - base[k] for k, v in c.unet.state_dict().items() if "base_layer" in k}
    with lora.active(c, req.loras, fuse=True):
        both = {k: v.clone() for k, v in c.unet.state_dict().items() if "base_layer" in k}
    assert both and all(torch.allclose(both[k], base[k] + 0.6 * deltas["Lora/one"][k] - 1.3 * deltas["Lora/two"][k],
                                       atol=1e-6) for k in both)
    assert sum(int(not torch.equal(deltas["Lora/one"][k], deltas["Lora/two"][k])) for k in both) > 0
    assert torch.equal(torch.stack([v.sum() for v in c.unet.state_dict().values()]),
                       torch.stack([v.sum() for v in base.values()]))  # restored after each


def test_switching_and_unloading_restore_the_model_bit_for_bit(manager, models_dir):
    c = manager.get("tiny")
    before, image = state(c), run(manager)
    for loras, fuse in (([("Lora/one", 1.0)], True), ([("Lora/two", 2.0), ("Lora/kohya", 1.0)], False),
                        ([("Lora/kohya", -1.0)], True)):
        assert not torch.equal(run(manager, loras, fuse), image)
        assert torch.equal(run(manager), image)  # the next job without LoRAs is the base model's
    after = state(c)
    for key, value in before.items():  # unfused never writes a base weight; fused puts the copy back
        wrapped = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after.get(key, after.get(wrapped)), value), key
    lora.unload_all(c)
    from peft.tuners.lora import LoraLayer
    assert not getattr(c.unet, "peft_config", None) or not any(isinstance(m, LoraLayer) and m.lora_A
                                                               for m in c.unet.modules())
    assert torch.equal(run(manager), image)
    fresh = ModelManager(["tiny"], device="cpu", models_dir=models_dir).get()
    req = request()
    assert torch.equal(generate(fresh, req), image)


def test_kohya_layout_equals_the_diffusers_layout(manager):
    torch.testing.assert_close(run(manager, [("Lora/kohya", 1.0)]), run(manager, [("Lora/two", 1.0)]),
                               atol=1e-6, rtol=0)


def test_loaded_once_and_cached(manager, monkeypatch):
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    run(manager, [("Lora/one", 1.0)])
    calls = []
    original = StableDiffusionLoraLoaderMixin.lora_state_dict.__func__
    monkeypatch.setattr(StableDiffusionLoraLoaderMixin, "lora_state_dict",
                        classmethod(lambda cls, *a, **k: calls.append(a) or original(cls, *a, **k)))
    run(manager, [("Lora/one", 0.5)])
    assert calls == []  # the second job found it loaded


def test_a_lora_for_another_model_is_refused_and_leaves_the_model_as_it_was(manager, tmp_path):
    from generator_backend.models import POCKET_DIR  # noqa: F401
    pocket = ModelManager(["pocket"], device="cpu").get()
    path = build_lora(pocket, manager.library.root / "Lora" / "pocket-lora.safetensors", seed=3)
    try:
        manager.rescan()
        image = run(manager)
        with pytest.raises(ProtocolError) as refused:
            run(manager, [("Lora/one", 1.0), ("Lora/pocket-lora", 1.0)])
        assert refused.value.field == "params.loras[1].name" and "does not fit" in refused.value.message
        assert torch.equal(run(manager), image)
    finally:
        path.unlink()
        manager.rescan()


def test_an_unlisted_name_is_refused_naming_the_field(manager):
    req = request([("Lora/nope", 1.0)])
    with pytest.raises(ProtocolError) as refused:
        lora.resolve(req, manager.library)
    assert refused.value.field == "params.loras[0].name" and "Lora/one" in refused.value.allowed


def test_loras_compose_with_seamless_and_img2img(manager):
    init = torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0))
    for kw in ({"tile_axes": "xy"}, {"init_image": init, "strength": 0.6}):
        base, with_lora = run(manager, **kw), run(manager, [("Lora/one", 1.0)], **kw)
        assert not torch.equal(base, with_lora)
        assert torch.equal(run(manager, [("Lora/one", 0.0)], **kw), base)


def test_loras_hold_through_the_layout_pass(manager):
    """The layout pass runs the core again inside the job (techniques/layout.py): the LoRAs stay
    applied once, not twice, and not taken off by the inner run's exit."""
    base = run(manager, layout="on")
    unfused = run(manager, [("Lora/two", 1.0)], layout="on")
    fused = run(manager, [("Lora/two", 1.0)], True, layout="on")
    torch.testing.assert_close(fused, unfused, atol=1e-5, rtol=0)
    c = manager.get("tiny")
    with lora.active(c, [LoraTerm("Lora/two", 1.0, manager.library.get("Lora/two").path)], fuse=False):
        held = generate(c, request(layout="on"))  # the LoRA on around both passes, from outside
    assert torch.equal(unfused, held) and not torch.equal(unfused, base)
    assert torch.equal(run(manager, [("Lora/two", 0.0)], layout="on"), base)
    assert torch.equal(run(manager, layout="on"), base)


def test_every_model_of_an_ensemble_gets_the_loras(manager):
    members = [(manager.get("tiny"), 0.5), (manager.get("tiny-b"), 0.5)]
    base = generate(members, request())
    req = request([("Lora/two", 1.0)])
    lora.resolve(req, manager.library)
    changed = generate(members, req)
    with lora.active(members[0][0], req.loras, fuse=False):  # the LoRA on the first model only
        first_only = generate(members, request())
    assert not torch.equal(changed, base) and not torch.equal(changed, first_only)
    zero = request([("Lora/two", 0.0)])
    lora.resolve(zero, manager.library)
    assert torch.equal(generate(members, zero), base) and torch.equal(generate(members, request()), base)
