"""Teach a Concept (Image Editor): a new word learned from 3..10 images by the backend
(textual inversion, kind teach_concept), its previews shown in an image, and its use in prompts."""

import os
import re

import bpy

from .. import blender_images, protocol
from ..concepts import square_resized
from ..job_builder import JobInputError, image_pixels, wire_array
from ..preferences import get_preferences
from ..properties import BACKEND_DEFAULT_MODEL
from ..session import BLENDER_OUTPUT, SESSION
from .generate import report_input_errors

PREVIEW_PREFIX = "Concept "  # the preview image of a word is named "Concept <word>"


def concept_params(scene) -> tuple[dict, dict]:
    """The teach_concept job of the panel: its parameters and its images as arrays concept_0..."""
    concept, model = scene.dream_concept, scene.dream.model
    word = concept.word.strip().lower()
    if not re.fullmatch(protocol.CONCEPT_WORD, word):
        raise JobInputError("The Word must be 1..64 letters, digits, '-' or '_' (no spaces): it is what you "
                            "will type in prompts")
    images = [item.image for item in concept.images if item.image is not None]
    low, high = protocol.CONCEPT_IMAGES
    if not low <= len(images) <= high:
        raise JobInputError(f"Pick {low} to {high} images of the concept (now {len(images)})")
    arrays = {}
    for name, image in zip(protocol.CONCEPT_ARRAYS, images):
        arrays[name] = wire_array(image, square_resized(image_pixels(image), concept.size))
    params = {**BLENDER_OUTPUT, "input_linear": True, "input_flip_y": True, "word": word,
              "initializer": concept.initializer, "train_steps": concept.train_steps, "vectors": concept.vectors,
              "learning_rate": concept.learning_rate, "preview_every": concept.preview_every,
              "width": concept.size, "height": concept.size, "seed": scene.dream.seed,
              "model": "" if model == BACKEND_DEFAULT_MODEL else model}
    protocol.validate_job("teach_concept", params, arrays)  # a bad setting says so before anything is made
    return params, arrays


PREVIEW_TAG = "dream_concept_preview"  # on the preview images teaching made: only those are written again


def preview_image(word: str, size: int):
    """(image, made) for the word's previews: an earlier teaching's preview of that size is reused; an image
    of the user's that has the name is never written into (the new one gets Blender's next free name)."""
    name = PREVIEW_PREFIX + word
    image = bpy.data.images.get(name)
    if image is not None and image.get(PREVIEW_TAG) == word and tuple(image.size) == (size, size):
        return image, False
    image = blender_images.new_result_image(name, size, size)
    image[PREVIEW_TAG] = word
    return image, True


class DREAM_OT_teach_concept(bpy.types.Operator):
    bl_idname = "dream.teach_concept"
    bl_label = "Teach Concept"
    bl_description = ("Teach the model a new word from the images: it learns in the backend (progress in the "
                      "status bar, previews in the image 'Concept <word>'), then the word works in any prompt")

    @report_input_errors
    def execute(self, context):
        params, arrays = concept_params(context.scene)
        image, made = preview_image(params["word"], params["width"])
        space = context.space_data
        if space is not None and space.type == "IMAGE_EDITOR":
            space.image = image
        SESSION.submit(get_preferences(), params, image.name, arrays,
                       datablocks={"scene": context.scene, "image": image}, kind="teach_concept",
                       operator="dream.teach_concept", scene_name=context.scene.name, total=params["train_steps"],
                       created=("image",) if made else ())
        return {"FINISHED"}


def last_teaching(states):
    return next((j for j in reversed(SESSION.jobs.values()) if j.kind == "teach_concept" and j.state in states),
                None)


class DREAM_OT_teach_resume(bpy.types.Operator):
    bl_idname = "dream.teach_resume"
    bl_label = "Resume Teaching"
    bl_description = "Go on with the last cancelled or failed teaching from its last checkpoint"

    @classmethod
    def poll(cls, context):
        return last_teaching(("cancelled", "error", "lost")) is not None

    def execute(self, context):
        SESSION.resume(get_preferences(), last_teaching(("cancelled", "error", "lost")).job_id)
        return {"FINISHED"}


class DREAM_OT_concept_add_image(bpy.types.Operator):
    bl_idname = "dream.concept_add_image"
    bl_label = "Add Image"
    bl_description = "Add a slot for an image of the .blend (the Image Editor's image when there is one)"

    def execute(self, context):
        concept = context.scene.dream_concept
        item = concept.images.add()
        space = context.space_data
        if space is not None and space.type == "IMAGE_EDITOR" and space.image is not None \
                and not space.image.name.startswith(PREVIEW_PREFIX):
            item.image = space.image
        concept.images_index = len(concept.images) - 1
        return {"FINISHED"}


class DREAM_OT_concept_add_files(bpy.types.Operator):
    bl_idname = "dream.concept_add_files"
    bl_label = "Add Image Files…"
    bl_description = "Load image files and add them to the concept's images"

    directory: bpy.props.StringProperty(subtype="DIR_PATH")
    files: bpy.props.CollectionProperty(type=bpy.types.OperatorFileListElement)
    filter_image: bpy.props.BoolProperty(default=True, options={"HIDDEN"})

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    @report_input_errors
    def execute(self, context):
        concept = context.scene.dream_concept
        for entry in self.files:
            path = os.path.join(bpy.path.abspath(self.directory), entry.name)
            try:
                image = bpy.data.images.load(path, check_existing=True)
            except RuntimeError:
                raise JobInputError(f"Cannot read {path!r} as an image") from None
            concept.images.add().image = image
        concept.images_index = len(concept.images) - 1
        return {"FINISHED"}


class DREAM_OT_concept_remove_image(bpy.types.Operator):
    bl_idname = "dream.concept_remove_image"
    bl_label = "Remove Image"
    bl_description = "Remove the selected image from the concept (the image stays in the .blend)"

    @classmethod
    def poll(cls, context):
        return len(context.scene.dream_concept.images) > 0

    def execute(self, context):
        concept = context.scene.dream_concept
        concept.images.remove(concept.images_index)
        concept.images_index = max(0, min(concept.images_index, len(concept.images) - 1))
        return {"FINISHED"}


class DREAM_OT_concept_use_word(bpy.types.Operator):
    bl_idname = "dream.concept_use_word"
    bl_label = "Use in Prompt"
    bl_description = "Add the taught word to the end of the prompt"

    @classmethod
    def poll(cls, context):
        return bool(context.scene.dream_concept.word.strip())

    def execute(self, context):
        props, word = context.scene.dream, context.scene.dream_concept.word.strip().lower()
        if word not in props.prompt.lower().split():
            props.prompt = f"{props.prompt.rstrip()} {word}".strip()
        return {"FINISHED"}


classes = (DREAM_OT_teach_concept, DREAM_OT_teach_resume, DREAM_OT_concept_add_image, DREAM_OT_concept_add_files,
           DREAM_OT_concept_remove_image, DREAM_OT_concept_use_word)
