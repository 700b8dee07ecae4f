"""Start, stop and reconnect the backend; share a started one with another Blender."""

import bpy

from ..preferences import ADDON_PACKAGE, get_preferences
from ..session import SESSION


class DREAM_OT_backend_start(bpy.types.Operator):
    bl_idname = "dream.backend_start"
    bl_label = "Start Backend"
    bl_description = "Launch the generator backend with the chosen Python and model, and supervise it"

    def execute(self, context):
        prefs = get_preferences()
        log_path = bpy.utils.extension_path_user(ADDON_PACKAGE, path="logs", create=True)
        SESSION.start_backend(prefs, log_path=f"{log_path}/backend.log")
        self.report({"INFO"}, "Starting the Dream backend")
        return {"FINISHED"}


class DREAM_OT_backend_stop(bpy.types.Operator):
    bl_idname = "dream.backend_stop"
    bl_label = "Stop Backend"
    bl_description = "Stop the backend this Blender started and close the connection"

    def execute(self, context):
        SESSION.stop_backend()
        return {"FINISHED"}


class DREAM_OT_backend_reconnect(bpy.types.Operator):
    bl_idname = "dream.backend_reconnect"
    bl_label = "Reconnect"
    bl_description = "Open a new connection; jobs in flight are fetched again by their id"

    def execute(self, context):
        SESSION.connect(get_preferences())
        return {"FINISHED"}


def connection_text():
    """'host:port token' of the backend this Blender started and runs (None otherwise)."""
    backend = SESSION.backend
    if backend is None or backend.state != backend.RUNNING or not backend.ready_info:
        return None
    return f"{backend.ready_info['host']}:{backend.ready_info['port']} {backend.token}"


def parse_connection(text: str):
    """(host, port, token) from what Copy Connection wrote; ValueError when it is something else."""
    address, token = text.strip().split()
    host, port = address.rsplit(":", 1)
    if not token or not 0 < int(port) < 65536:
        raise ValueError(text)
    return host, int(port), token


class DREAM_OT_copy_connection(bpy.types.Operator):
    bl_idname = "dream.copy_connection"
    bl_label = "Copy Connection"
    bl_description = ("Copy the started backend's address and token, for Paste Connection in another Blender "
                      "that is to share it")

    @classmethod
    def poll(cls, context):
        return connection_text() is not None

    def execute(self, context):
        context.window_manager.clipboard = connection_text()
        self.report({"INFO"}, "Copied the backend's address and token: use Paste Connection in the other Blender")
        return {"FINISHED"}


class DREAM_OT_paste_connection(bpy.types.Operator):
    bl_idname = "dream.paste_connection"
    bl_label = "Paste Connection"
    bl_description = "Connect to a backend another Blender started, from what its Copy Connection copied"

    text: bpy.props.StringProperty(name="Connection", options={"SKIP_SAVE"},
                                   description="host:port token (empty: the clipboard)")

    def execute(self, context):
        try:
            host, port, token = parse_connection(self.text or context.window_manager.clipboard)
        except ValueError:
            self.report({"ERROR"}, "No connection details to paste: press Copy Connection in the Blender that "
                                   "started the backend (they read 'host:port token')")
            return {"CANCELLED"}
        prefs = get_preferences()
        prefs.host, prefs.port, prefs.token = host, port, token
        SESSION.connect(prefs)
        return {"FINISHED"}


classes = (DREAM_OT_backend_start, DREAM_OT_backend_stop, DREAM_OT_backend_reconnect, DREAM_OT_copy_connection,
           DREAM_OT_paste_connection)
