"""Shared by the Blender tests: bpy with the extension enabled from this checkout.

bpy imports once per process and must never share it with torch, so this folder runs in
its own pytest process (scripts/test does that)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import blender_session  # noqa: E402  (sets BLENDER_USER_RESOURCES before bpy is imported)

import bpy  # noqa: E402

MODULE = blender_session.install_dev()


def addon(name):
    return sys.modules[f"{MODULE}.dream_addon.{name}"]


def generate(session, timeout=120):
    """Run the operator and drain until its job ends, as the UI timer would."""
    before = set(session.jobs)
    assert bpy.ops.dream.generate_texture() == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    return session.wait_for(job_id, timeout)
