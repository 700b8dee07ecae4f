"""Reports from the backend about a job (its ``warning`` events) in Blender's status bar and Info log."""

import bpy


class DREAM_OT_report_warning(bpy.types.Operator):
    bl_idname = "dream.report_warning"
    bl_label = "Dream Warning"
    bl_description = "Show a warning from the backend in the status bar and the Info log"
    bl_options = {"INTERNAL"}

    text: bpy.props.StringProperty()

    def execute(self, context):
        self.report({"WARNING"}, self.text)  # only an operator's report reaches the status bar
        return {"FINISHED"}


def show_job_warning(job, message):
    """A job's ``warning`` event: kept on the job for the panel, and reported."""
    text = message.get("message") or message.get("code", "warning")
    job.warning = f"{job.warning}; {text}" if job.warning else text
    bpy.ops.dream.report_warning(text=f"Dream: {text}")


classes = (DREAM_OT_report_warning,)
