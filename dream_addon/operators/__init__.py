from . import backend, generate, history_ops, latent, mosaic, notices

classes = (backend.classes + generate.classes + history_ops.classes + notices.classes + latent.classes
           + mosaic.classes)
