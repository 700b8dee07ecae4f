"""Add-on preferences: where the backend is, how to launch it, and its status and log."""

import bpy

from . import protocol
from .session import SESSION


ADDON_PACKAGE = __package__.rsplit(".", 1)[0]  # the extension's module, parent of dream_addon


def get_preferences():
    return bpy.context.preferences.addons[ADDON_PACKAGE].preferences


class DreamPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    host: bpy.props.StringProperty(name="Host", default="127.0.0.1",
                                   description="Backend address; the backend listens on loopback only")
    port: bpy.props.IntProperty(name="Port", default=protocol.DEFAULT_PORT, min=0, max=65535,
                                description="TCP port; 0 lets Start pick a free one")
    token: bpy.props.StringProperty(name="Token", default="", subtype="PASSWORD",
                                    description="Token of a backend started outside Blender (its token file); "
                                                "not needed when Start launches it")
    python_path: bpy.props.StringProperty(name="Python", default="", subtype="FILE_PATH",
                                          description="Interpreter with torch and diffusers installed, "
                                                      "used by Start")
    model: bpy.props.StringProperty(name="Models", default=protocol.DEFAULT_MODEL,
                                    description="Diffusers folders or hub ids to serve, separated by commas (the "
                                                "first is the default); 'pocket' is the small offline texture "
                                                "model that ships with the backend")
    models_dir: bpy.props.StringProperty(name="Models Folder", default="", subtype="DIR_PATH",
                                         description="Your checkpoints (.safetensors single files or diffusers "
                                                     "folders), LoRAs, embeddings and upscalers: Start serves them; "
                                                     "Rescan picks up files added later")
    model_types: bpy.props.StringProperty(name="Model Types", default="",
                                          description="Override what was detected in a models-folder checkpoint: "
                                                      "NAME=FAMILY[/KIND], separated by commas, e.g. "
                                                      "my-sd21-base=sd2-base (families sd1, sd2, sd2-base, sdxl); "
                                                      "applied by Rescan and Start")
    upscalers: bpy.props.StringProperty(name="Upscalers", default="",
                                        description="Upscaler files (.safetensors, or weights-only .pth: ESRGAN, "
                                                    "Real-ESRGAN, SwinIR, HAT, DAT...) or folders of them, separated "
                                                    "by commas; the shipped pocket-x4 is always served")
    device: bpy.props.EnumProperty(name="Device", default="auto", items=[
        ("auto", "Auto", "CUDA, then Apple MPS, then CPU"), ("cuda", "CUDA", ""), ("mps", "MPS", ""),
        ("cpu", "CPU", "")])
    output_dir: bpy.props.StringProperty(name="Output Folder", default="", subtype="DIR_PATH",
                                         description="Where the backend writes every result (empty: its default)")
    float_results: bpy.props.BoolProperty(
        name="Float Textures", default=False,
        description="Generate Texture makes 32-bit float images (linear, packed as EXR: about 4x the size in the "
                    ".blend) instead of 8-bit sRGB ones (packed as PNG)")

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "python_path")
        col.prop(self, "model")
        col.prop(self, "models_dir")
        col.prop(self, "model_types")
        col.prop(self, "upscalers")
        col.prop(self, "device")
        col.prop(self, "output_dir")
        col.prop(self, "float_results")
        row = col.row()
        row.prop(self, "host")
        row.prop(self, "port")
        col.prop(self, "token")
        row = layout.row()
        row.operator("dream.backend_start", icon="PLAY")
        row.operator("dream.backend_stop", icon="PAUSE")
        row.operator("dream.backend_reconnect", icon="FILE_REFRESH")
        row.operator("dream.paste_connection", icon="PASTEDOWN")
        box = layout.box()
        box.label(text=SESSION.status, icon="INFO")
        if SESSION.backend is not None:
            box.label(text="Process: " + SESSION.backend.describe())
            from .operators.backend import connection_text

            shared = connection_text()
            if shared is not None:  # another Blender can use this backend too
                row = box.row()
                row.label(text=f"Address {shared.split()[0]}, token {shared.split()[1][:4]}…", icon="LINKED")
                row.operator("dream.copy_connection", icon="COPYDOWN")
            for line in list(SESSION.backend.tail)[-8:]:
                box.label(text=line[:160])


classes = (DreamPreferences,)
