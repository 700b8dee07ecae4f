"""Dream: Stable Diffusion textures for Blender (extension entry point)."""

from .dream_addon.addon import register, unregister  # noqa: F401
