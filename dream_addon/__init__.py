"""Dream for Blender. Modules that need bpy are imported from ``addon``; the rest
(protocol, client, supervisor) run in plain Python too, and the backend shares the protocol."""
