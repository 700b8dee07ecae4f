"""Dream: Stable Diffusion textures for Blender (extension entry point).

bpy is imported only when Blender registers the extension, so tools that import this
folder as a package (pytest does) do not pull Blender in."""


def register():
    from .dream_addon import addon

    addon.register()


def unregister():
    from .dream_addon import addon

    addon.unregister()
