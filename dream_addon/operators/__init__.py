from . import backend, concept, generate, history_ops, latent, models, mosaic, notices, upscale

classes = (backend.classes + generate.classes + history_ops.classes + notices.classes + latent.classes + concept.classes
           + models.classes + mosaic.classes + upscale.classes)
