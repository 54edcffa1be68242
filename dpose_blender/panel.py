"""The 3D Viewport sidebar tab "D-PoSE": image, sequence, progress and status."""

import bpy

from . import jobs

_REPORT_ICONS = {"INFO": "INFO", "WARNING": "ERROR", "ERROR": "CANCEL"}


def _draw_status(layout, context) -> None:
    from .preferences import get_preferences

    prefs = get_preferences(context)
    if prefs is None:
        return
    if not prefs.checkpoint_ok:
        row = layout.row()
        row.alert = True
        row.label(text=prefs.status_checkpoint, icon="ERROR")
        layout.operator("preferences.addon_show", text="Open Preferences",
                        icon="PREFERENCES").module = prefs.bl_idname


def draw_progress(layout, context) -> bool:
    """Progress bar (frames done, frames/s, ETA) and Cancel; True while a job runs."""
    job = jobs.active_job()
    if job is None or job.finished:
        return False
    s = context.scene.dpose
    box = layout.box()
    box.label(text=f"D-PoSE {s.job_label or job.label} running (Esc to cancel)", icon="TIME")
    if hasattr(box, "progress"):  # UILayout.progress: Blender 4.0+
        box.progress(factor=s.job_fraction, type="BAR", text=s.job_text or "starting")
    else:
        box.label(text=s.job_text)
    box.operator("dpose.cancel_job", icon="CANCEL")
    return True


class SidebarPanel:
    """Where every D-PoSE panel lives: 3D Viewport > Sidebar (N) > tab "D-PoSE"."""

    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "D-PoSE"


class DPOSE_PT_main(SidebarPanel, bpy.types.Panel):
    bl_label = "D-PoSE"
    bl_idname = "DPOSE_PT_main"

    def draw(self, context):
        layout = self.layout
        _draw_status(layout, context)
        running = draw_progress(layout, context)
        s = context.scene.dpose
        if s.last_report and not running:
            row = layout.row()
            row.alert = s.last_report_level == "ERROR"
            row.label(text=s.last_report, icon=_REPORT_ICONS.get(s.last_report_level, "INFO"))

        col = layout.column(align=True)
        col.prop(s, "people")
        if s.people == "INDEX":
            col.prop(s, "person_index")
        col.prop(s, "focal_mode", text="")
        if s.focal_mode == "FOV":
            col.prop(s, "fov_deg")
        row = layout.row(align=True)
        row.prop(s, "add_mesh", toggle=True)
        row.prop(s, "add_depth_plane", toggle=True)
        row.prop(s, "part_overlay", toggle=True)
        if s.add_depth_plane:
            layout.prop(s, "depth_scale")
        layout.prop(s, "low_part_iou")
        layout.prop(s, "key_selected")
        _draw_grounding(layout.box(), s)


def _draw_grounding(box, s) -> None:
    """Ground / Foot Lock / Subject Height / Camera: the refine stage's options."""
    box.prop(s, "ground")
    col = box.column(align=True)
    col.enabled = s.ground != "OFF"
    col.prop(s, "foot_lock")
    col.prop(s, "subject_height")
    col.prop(s, "follow_camera")
    col.prop(s, "add_floor")


class DPOSE_PT_part_legend(SidebarPanel, bpy.types.Panel):
    """The part colours of the Part Overlay (the same as `dpose estimate --overlay`)."""

    bl_label = "Part Colours"
    bl_parent_id = "DPOSE_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        from .evidence import legend_icons

        flow = self.layout.grid_flow(columns=2, even_columns=True, align=True)
        for name, icon in legend_icons():
            flow.label(text=name, icon_value=icon.icon_id)


class DPOSE_PT_image(SidebarPanel, bpy.types.Panel):
    bl_label = "Estimate Pose from Image"
    bl_parent_id = "DPOSE_PT_main"

    def draw(self, context):
        layout = self.layout
        s = context.scene.dpose
        layout.prop(s, "image_path", text="")
        if not s.image_path:
            layout.label(text="Empty: the active camera's background", icon="CAMERA_DATA")
        col = layout.column()
        col.enabled = jobs.active_job() is None or jobs.active_job().finished
        col.operator("dpose.estimate_image", icon="ARMATURE_DATA")


class DPOSE_PT_sequence(SidebarPanel, bpy.types.Panel):
    bl_label = "Video / Sequence to Keyframes"
    bl_parent_id = "DPOSE_PT_main"

    def draw(self, context):
        layout = self.layout
        s = context.scene.dpose
        layout.prop(s, "sequence_path", text="")
        row = layout.row(align=True)
        row.prop(s, "frame_first")
        row.prop(s, "frame_last")
        row = layout.row(align=True)
        row.prop(s, "stride")
        row.prop(s, "fps")
        layout.prop(s, "start_frame")
        layout.prop(s, "smooth")
        row = layout.row(align=True)
        row.prop(s, "use_box", text="")
        sub = row.row(align=True)
        sub.enabled = s.use_box
        sub.prop(s, "box", text="")
        col = layout.column()
        col.enabled = jobs.active_job() is None or jobs.active_job().finished
        col.operator("dpose.estimate_sequence", icon="RENDER_ANIMATION")


class DPOSE_PT_files(SidebarPanel, bpy.types.Panel):
    """Motion files in and out: import an .npz, export the active rig."""

    bl_label = "Import / Export"
    bl_parent_id = "DPOSE_PT_main"

    def draw(self, context):
        layout = self.layout
        layout.operator("dpose.import_motion", icon="IMPORT")
        col = layout.column(align=True)
        col.operator("dpose.export_npz", icon="EXPORT")
        col.operator("dpose.export_fbx", icon="EXPORT")
        col.operator("dpose.export_bvh", icon="EXPORT")
        col.operator("dpose.export_gltf", icon="EXPORT")


classes = (DPOSE_PT_main, DPOSE_PT_image, DPOSE_PT_sequence, DPOSE_PT_files,
           DPOSE_PT_part_legend)
