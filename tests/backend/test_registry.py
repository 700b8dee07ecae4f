"""The technique registry: every protocol parameter and array has one owner, every job kind a runner,
and the typed request is built from the validated parameters with the protocol's defaults."""

import dataclasses

import numpy as np

from dream_addon import protocol
from generator_backend import latent_codec, teach, tiles, upscale
from generator_backend.core import GenerationRequest
from generator_backend.runner import EXECUTORS
from generator_backend.techniques import CORE_FIELDS, RUNNER_FIELDS, TECHNIQUES, request_from_params


def all_fields():
    return {name for spec in protocol.JOB_KINDS.values() for name in spec.fields()}


def test_every_parameter_has_exactly_one_owner():
    # (the kinds an owner's fields belong to, or None for every kind; its field names)
    owners = [(None, CORE_FIELDS), (None, RUNNER_FIELDS), (latent_codec.KINDS, latent_codec.FIELDS),
              ((teach.KIND,), teach.FIELDS), (tiles.KINDS, tiles.FIELDS), (upscale.KINDS, upscale.FIELDS)] + \
        [(None, t.fields) for t in TECHNIQUES]
    for kind, spec in protocol.JOB_KINDS.items():  # two kinds may each have a field of one name (tile_size)
        for name in spec.fields():
            claims = [fields for kinds, fields in owners if name in fields and (kinds is None or kind in kinds)]
            assert len(claims) == 1, (kind, name, claims)
    assert {name for _, fields in owners for name in fields} == all_fields()  # no owner claims a name nobody takes


def test_every_array_has_an_owner_and_every_kind_a_runner():
    arrays = {name for spec in protocol.JOB_KINDS.values() for name in spec.arrays + spec.optional_arrays} | \
        set(protocol.INFUSION_ARRAYS)
    # init_image: the runner's; teach.py owns the concept images
    assert {name for t in TECHNIQUES for name in t.arrays} | {"init_image"} | set(protocol.CONCEPT_ARRAYS) >= arrays
    assert set(EXECUTORS) == set(protocol.JOB_KINDS)


def test_request_defaults_are_the_protocols():
    """A request built from defaults equals GenerationRequest's own defaults, kind by kind."""
    plain = GenerationRequest()
    for kind, spec in protocol.JOB_KINDS.items():
        make = spec.fields
        if kind in latent_codec.KINDS + upscale.KINDS or kind == teach.KIND:  # they make no GenerationRequest
            continue
        params = protocol.validate_params({"prompt": "a"}, make())
        request = request_from_params(params, {})
        for f in dataclasses.fields(GenerationRequest):
            if f.name in ("prompt", "walk") or (kind in ("inpaint", *tiles.KINDS) and f.name == "strength"):
                continue
            assert getattr(request, f.name) == getattr(plain, f.name), (kind, f.name)
        fields = make()
        for name in (set(fields) & {f.name for f in dataclasses.fields(GenerationRequest)}) - {"prompt", "walk"}:
            default = fields[name].default  # None: an optional list or map, left out
            assert getattr(request, name) == (default if default is not None else type(getattr(request, name))())
    assert request_from_params(protocol.validate_params({}, protocol.inpaint_fields()), {}).strength == 1.0
    assert plain.layout == protocol.txt2img_fields()["layout"].default


def test_request_carries_arrays_and_walk_settings():
    init = np.full((64, 64, 3), 255, np.uint8)
    mask = np.zeros((64, 64, 1), np.uint8)
    params, arrays = protocol.validate_job("inpaint", {"prompt": "a", "width": 64, "height": 64, "seamless": "x",
                                                       "feather": 2.0, "infusion_weights": {"mid": 1.0}},
                                           {"init_image": init, "mask": mask, "infusion_1": init})
    request = request_from_params(params, arrays)
    assert request.init_image.shape == (64, 64, 3) and float(request.init_image.min()) == 1.0
    assert request.mask.shape == (64, 64) and request.tile_axes == "x" and request.feather == 2.0
    assert len(request.infusion_images) == 1 and request.infusion_weights == {"mid": 1.0}
    params, _ = protocol.validate_job("walk", {"walk": "seeds", "prompt": "a", "walk_seeds": [3, 4], "frames": 5}, {})
    walk = request_from_params(params, {}).walk
    assert (walk.walk, walk.frames, walk.walk_seeds, walk.period) == ("seeds", 5, (3, 4), 0)
