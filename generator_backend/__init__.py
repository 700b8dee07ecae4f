"""Dream generator backend: a local process that runs Stable Diffusion techniques for Blender.

Importing this package is cheap; torch and diffusers load when a command needs them.
"""

__version__ = "0.1.0"
