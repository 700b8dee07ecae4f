from . import backend, generate, history_ops

classes = backend.classes + generate.classes + history_ops.classes
