"""Sidebar panels (3D View and Image Editor) and the status-bar progress."""

import bpy

from ..session import SESSION


def draw_generation(layout, context):
    props = context.scene.dream
    layout.prop(props, "prompt", text="")
    layout.prop(props, "negative_prompt")
    row = layout.row(align=True)
    row.prop(props, "seed")
    row.operator("dream.randomize_seed", text="", icon="FILE_REFRESH")
    row.prop(props, "randomize_seed", text="", icon="MOD_NOISE")
    col = layout.column(align=True)
    col.prop(props, "steps")
    col.prop(props, "guidance")
    col.prop(props, "scheduler")
    row = layout.row(align=True)
    row.prop(props, "width")
    row.prop(props, "height")
    layout.prop(props, "preview_interval")
    draw_progress(layout)


def draw_progress(layout):
    jobs = SESSION.active_jobs()
    row = layout.row(align=True)
    row.scale_y = 1.4
    row.operator("dream.generate_texture", icon="SHADERFX")
    if jobs:
        row.operator("dream.cancel", text="", icon="CANCEL")
        for job in jobs[:4]:
            layout.progress(factor=job.step / max(job.total, 1), type="BAR", text=job.progress_text())
    elif SESSION.jobs:
        last = list(SESSION.jobs.values())[-1]
        layout.label(text=last.progress_text(), icon="ERROR" if last.state == "error" else "CHECKMARK")
    layout.label(text=SESSION.status, icon="LINKED" if SESSION.welcome else "UNLINKED")


class DreamPanel:
    bl_region_type = "UI"
    bl_category = "Dream"
    bl_label = "Dream Texture"

    def draw(self, context):
        draw_generation(self.layout, context)


class VIEW3D_PT_dream(DreamPanel, bpy.types.Panel):
    bl_space_type = "VIEW_3D"


class IMAGE_PT_dream(DreamPanel, bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"


def draw_status_bar(self, context):
    jobs = SESSION.active_jobs()
    if jobs:
        job = jobs[0]
        self.layout.progress(factor=job.step / max(job.total, 1), type="RING",
                             text=f"Dream: {job.progress_text()}")


classes = (VIEW3D_PT_dream, IMAGE_PT_dream)
