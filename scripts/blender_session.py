"""Helpers to run the Dream extension inside the bpy module (demo, tests, benchmarks).

Import this before anything else imports bpy: it sets BLENDER_USER_RESOURCES to a
private folder first, so installs never touch the user's own Blender configuration.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXTENSION_ID = "dream"

_USER_RESOURCES = os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="dream-blender-user-"))

import bpy  # noqa: E402  (must come after BLENDER_USER_RESOURCES)


def blender_ext_cli() -> Path:
    return Path(bpy.utils.system_resource("SCRIPTS")) / "addons_core" / "bl_pkg" / "cli" / "blender_ext.py"


def build_extension_zip(out_dir) -> Path:
    """Build the extension zip with Blender's own builder (after validating the manifest)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cli = str(blender_ext_cli())
    subprocess.run([sys.executable, cli, "validate", str(REPO)], check=True, capture_output=True, text=True)
    subprocess.run([sys.executable, cli, "build", "--source-dir", str(REPO), "--output-dir", str(out_dir)],
                   check=True, capture_output=True, text=True)
    return next(out_dir.glob(f"{EXTENSION_ID}-*.zip"))


def install_zip(zip_path) -> str:
    """Install and enable a built zip the way "Install from Disk" does; return the module name."""
    result = bpy.ops.extensions.package_install_files(filepath=str(zip_path), repo="user_default",
                                                      enable_on_install=True)
    assert result == {"FINISHED"}, result
    return f"bl_ext.user_default.{EXTENSION_ID}"


def install_dev() -> str:
    """Enable the extension straight from this checkout (a repository holding a link to it)."""
    import addon_utils

    repo_dir = Path(tempfile.mkdtemp(prefix="dream-dev-repo-"))
    (repo_dir / EXTENSION_ID).symlink_to(REPO, target_is_directory=True)
    bpy.context.preferences.extensions.repos.new(name="dev", module="dev", custom_directory=str(repo_dir),
                                                 source="USER")
    module = f"bl_ext.dev.{EXTENSION_ID}"
    addon_utils.enable(module, default_set=True, handle_error=None)
    return module


def addon_module(module_name: str):
    """The extension's package after it is enabled (for SESSION and helpers)."""
    return sys.modules[module_name]
