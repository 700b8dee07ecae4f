from . import backend, generate, history_ops, latent, models, notices

classes = backend.classes + generate.classes + history_ops.classes + notices.classes + latent.classes + models.classes
