from . import backend, generate, history_ops, notices

classes = backend.classes + generate.classes + history_ops.classes + notices.classes
