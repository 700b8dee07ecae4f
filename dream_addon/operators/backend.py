"""Start, stop and reconnect the backend."""

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


classes = (DREAM_OT_backend_start, DREAM_OT_backend_stop, DREAM_OT_backend_reconnect)
