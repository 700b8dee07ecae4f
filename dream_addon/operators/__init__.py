from . import backend, generate, history_ops, latent, notices, upscale

classes = backend.classes + generate.classes + history_ops.classes + notices.classes + latent.classes + upscale.classes
