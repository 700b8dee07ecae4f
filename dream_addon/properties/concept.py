"""Teach a Concept panel settings (Scene.dream_concept); bounds and defaults are the protocol's."""

import bpy

from .. import protocol
from ..field_props import number_args

_TEACH = protocol.teach_fields()


class DreamConceptImage(bpy.types.PropertyGroup):
    image: bpy.props.PointerProperty(type=bpy.types.Image, name="Image", description="A picture of the concept")


class DreamConceptProperties(bpy.types.PropertyGroup):
    word: bpy.props.StringProperty(name="Word", description=_TEACH["word"].doc, maxlen=_TEACH["word"].max_length)
    initializer: bpy.props.StringProperty(name="Start From", description=_TEACH["initializer"].doc,
                                          default=_TEACH["initializer"].default,
                                          maxlen=_TEACH["initializer"].max_length)
    train_steps: bpy.props.IntProperty(name="Steps", **number_args(_TEACH["train_steps"]))
    vectors: bpy.props.IntProperty(name="Vectors", **number_args(_TEACH["vectors"]))
    learning_rate: bpy.props.FloatProperty(name="Learning Rate", precision=4, step=0.1,
                                           **number_args(_TEACH["learning_rate"]))
    preview_every: bpy.props.IntProperty(name="Preview Every", **number_args(_TEACH["preview_every"]))
    size: bpy.props.IntProperty(name="Size", subtype="PIXEL", step=64,
                                description="The images are resized to this square size (the model's own size "
                                            "works best: 512 for SD 1.x, 64 for the pocket model)",
                                **{k: v for k, v in number_args(_TEACH["width"]).items() if k != "description"})
    images: bpy.props.CollectionProperty(type=DreamConceptImage)
    images_index: bpy.props.IntProperty()


classes = (DreamConceptImage, DreamConceptProperties)
