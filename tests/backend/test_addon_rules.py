"""Rules for the add-on code that need no Blender to check."""

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ALLOWED_THIRD_PARTY = {"bpy", "numpy", "addon_utils", "bl_ui", "bl_operators", "mathutils", "bmesh", "gpu", "bpy_extras"}  # Blender ships these
ADDON_FILES = sorted((REPO / "dream_addon").rglob("*.py")) + [REPO / "__init__.py"]


@pytest.mark.parametrize("path", ADDON_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_addon_imports_only_stdlib_numpy_and_blender(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY, f"{path}: imports {name}"


def test_protocol_client_and_supervisor_import_without_blender():
    # The backend shares these modules; importing them must not need bpy.
    import dream_addon.client
    import dream_addon.protocol
    import dream_addon.supervisor

    assert "bpy" not in sys.modules
