"""Registration of the Dream extension (imports bpy; everything else in dream_addon that
does not need Blender stays importable without it)."""

import bpy

from . import operators, preferences, properties, session, ui, walk_frames

classes = preferences.classes + properties.classes + operators.classes + ui.classes


def register():
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.dream = bpy.props.PointerProperty(type=properties.DreamSceneProperties)
    bpy.types.Scene.dream_history = bpy.props.CollectionProperty(type=properties.DreamHistoryItem)
    bpy.types.Scene.dream_history_index = bpy.props.IntProperty()
    bpy.types.Scene.dream_walk = bpy.props.PointerProperty(type=properties.DreamWalkProperties)
    bpy.types.Scene.dream_latent = bpy.props.PointerProperty(type=properties.DreamLatentProperties)
    bpy.types.Scene.dream_concept = bpy.props.PointerProperty(type=properties.concept.DreamConceptProperties)
    bpy.types.Scene.dream_models = bpy.props.PointerProperty(type=properties.DreamModelsProperties)
    bpy.types.Scene.dream_mosaic = bpy.props.PointerProperty(type=properties.mosaic.DreamMosaicProperties)
    bpy.types.Scene.dream_enhance = bpy.props.PointerProperty(type=properties.mosaic.DreamEnhanceProperties)
    bpy.types.Scene.dream_upscale = bpy.props.PointerProperty(type=properties.DreamUpscaleProperties)
    bpy.types.STATUSBAR_HT_header.append(ui.panels.draw_status_bar)
    bpy.app.handlers.save_pre.append(walk_frames.keep_frames_with_project)
    # No network and no process start here: the connection opens on first use.
    bpy.app.timers.register(session.drain_timer, first_interval=0.25, persistent=True)
    bpy.app.handlers.load_pre.append(session.on_load_pre)
    bpy.app.handlers.load_post.append(session.on_load_post)
    bpy.app.handlers.save_pre.append(session.on_save_pre)
    bpy.app.handlers.save_post.append(session.on_save_post)


def unregister():
    if bpy.app.timers.is_registered(session.drain_timer):
        bpy.app.timers.unregister(session.drain_timer)
    for handlers, handler in ((bpy.app.handlers.load_pre, session.on_load_pre),
                              (bpy.app.handlers.load_post, session.on_load_post),
                              (bpy.app.handlers.save_pre, session.on_save_pre),
                              (bpy.app.handlers.save_post, session.on_save_post)):
        if handler in handlers:
            handlers.remove(handler)
    session.SESSION.stop_backend()
    bpy.types.STATUSBAR_HT_header.remove(ui.panels.draw_status_bar)
    if walk_frames.keep_frames_with_project in bpy.app.handlers.save_pre:
        bpy.app.handlers.save_pre.remove(walk_frames.keep_frames_with_project)
    del bpy.types.Scene.dream, bpy.types.Scene.dream_history, bpy.types.Scene.dream_history_index
    del bpy.types.Scene.dream_walk, bpy.types.Scene.dream_latent, bpy.types.Scene.dream_concept
    del bpy.types.Scene.dream_models, bpy.types.Scene.dream_mosaic, bpy.types.Scene.dream_enhance
    del bpy.types.Scene.dream_upscale
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
