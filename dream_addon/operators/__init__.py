from . import backend, generate

classes = backend.classes + generate.classes
