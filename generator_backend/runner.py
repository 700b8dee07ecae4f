"""Runs one job on the device: parameters in, events out, result saved before it is sent."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import torch
from PIL import Image

from dream_addon.latent_format import from_rows, to_rows
from dream_addon import protocol
from dream_addon.protocol import ProtocolError

from .core import Cancelled, GenerationRequest, IncompatibleModels, StepTimer, generate, latent_preview
from .encoding import Encoding, as_sent, image_tensor, output_encoding, pasted_back, to_rgba
from . import prompt_words
from .modifiers import Infusion
from .walks import WalkPlan
from .jobs import CANCELLED, DONE, FAILED, FINISHED, RUNNING, Job, JobQueue, JobStore, OutputUnwritable
from .models import ModelLoadError, ModelManager
from .techniques import lora, request_from_params, untouched_pixels

log = logging.getLogger("generator_backend.runner")


def build_request(job: Job, models: ModelManager | None = None) -> GenerationRequest:
    """The core's request from a validated job; its LoRAs get their files from the models folder."""
    request = request_from_params(job.params, job.inputs)
    if request.loras and models is not None:
        lora.resolve(request, models.library)
    return request


def check_request(request: GenerationRequest, unet):
    """What only the loaded model can tell: its UNet's input channels and layer names."""
    channels = unet.config.in_channels
    if channels not in (4, 9) or (channels == 9 and request.mask is None):
        raise ProtocolError("invalid_param", f"params.model has a {channels}-channel UNet: "
                            + ("use it with kind 'inpaint'" if channels == 9 else "only 4 or 9 are supported"),
                            field="params.model", allowed={"in_channels": [4, 9]})
    names = Infusion.layer_names(unet)
    weights = {}
    for name, weight in request.infusion_weights.items():
        if name in ("down", "up"):  # a group: every block of that kind, unless named on its own
            for layer in names:
                if layer.startswith(name) and layer not in request.infusion_weights:
                    weights[layer] = weight
        elif name in names:
            weights[name] = weight
        else:
            raise ProtocolError("invalid_param", f"params.infusion_weights.{name} is not a layer of this model",
                                field=f"params.infusion_weights.{name}", allowed=names + ["down", "up"])
    request.infusion_weights = weights


def result_frame(store: JobStore, meta: dict, image, output: dict, source=None):
    """The ``result`` message and its image array, delivered as ``output`` asks (dtype, flip, linear).

    ``source`` (input array, its Encoding, untouched (H, W) mask): those pixels are the input's
    own, recoded once from the input's encoding, so they stay bit-identical where it is the output's."""
    message = {"type": "result", "job_id": meta["job_id"], "width": meta["width"], "height": meta["height"],
               "seed": meta["seed"], "model": meta["model"], "timings": meta["timings"],
               "path": str(store.job_dir(meta["job_id"])), **{k: output[k] for k in ("flip_y", "linear")},
               **{k: meta[k] for k in ("frames", "fps", "folder", "word", "embedding", "initializer") if k in meta}}  # walks, teach
    rgba = to_rgba(image, output["output_dtype"], output["flip_y"], output["linear"])
    if source is not None:
        original, encoding, untouched = source
        rgba = pasted_back(rgba, original, encoding, output_encoding(output), untouched)
    arrays = {"image": rgba}
    for name, file in meta.get("attachments", {}).items():  # the codec's file, as latent_format rows
        data = (store.job_dir(meta["job_id"]) / file).read_bytes()
        arrays[name], message[f"{name.removesuffix('_file')}_bytes"] = to_rows(data), len(data)
    return message, arrays


def input_source(job: Job, request: GenerationRequest):
    """The job's input image with its encoding and the pixels no technique changed, or None."""
    untouched = untouched_pixels(request)
    if untouched is None:
        return None
    p = job.params
    return job.inputs["init_image"], Encoding(p["input_linear"], p["input_flip_y"]), untouched


# Job kind -> the Worker method that runs it: a new kind is registered here (and in the protocol).
EXECUTORS = {"txt2img": "execute_image", "img2img": "execute_image", "inpaint": "execute_image",
             "walk": "execute_walk", "compress": "execute_compress", "decompress": "execute_decompress",
             "teach_concept": "execute_teach",
             "mosaic": "execute_tiled", "detail": "execute_tiled", "enhance": "execute_tiled",
             "upscale": "execute_upscale"}


class Worker(threading.Thread):
    """Takes jobs from the queue one at a time and runs them on the model manager's device."""

    def __init__(self, queue: JobQueue, models: ModelManager, store: JobStore):
        super().__init__(name="dream-worker", daemon=True)
        self.queue, self.models, self.store = queue, models, store
        self.upscalers = None  # upscalers.UpscalerManager, set by the server

    def run(self):
        while (job := self.queue.take()) is not None:
            try:
                self.execute(job)
            except Exception:  # nothing a job does may end this thread: later jobs would wait forever
                log.exception("job %s: unexpected failure outside the job's own handling", job.job_id)
                self._settle(job)
            finally:
                self.queue.done()
                try:
                    for queued, position in self.queue.positions():
                        queued.emit({"type": "queued", "position": position})
                except Exception:
                    log.exception("queue positions could not be sent")

    def _settle(self, job: Job):
        """A job that escaped its own handling ends as failed, never left active."""
        try:
            if job.state not in FINISHED:
                self._failed(job, "internal", "internal error; see the backend log")
        except Exception:
            job.state = FAILED
            log.exception("job %s: its failure could not be reported", job.job_id)

    def execute(self, job: Job):
        if job.cancel_requested.is_set():
            return self._cancelled(job)
        return self._guarded(job, getattr(self, EXECUTORS[job.kind]))

    def _guarded(self, job: Job, run):
        """Run a job; every failure becomes its error event, and the worker lives on."""
        job.state = RUNNING
        job.emit({"type": "started", "total": job.total})
        try:
            result = run(job)
            if job.state not in FINISHED:  # an executor that forgot its ending must not leave the job stuck
                log.error("job %s: its executor returned without a result", job.job_id)
                self._failed(job, "job_failed", f"the {job.kind} job ended without a result (a backend bug; "
                                                "the log has details)")
            return result
        except Cancelled:
            return self._cancelled(job)
        except ModelLoadError as exc:
            self._failed(job, "model_load_failed", str(exc))
        except OutputUnwritable as exc:
            log.error("job %s: %s", job.job_id, exc)
            self._failed(job, **_error_fields(exc.to_error()))
        except ProtocolError as exc:
            self._failed(job, **_error_fields(exc))
        except IncompatibleModels as exc:
            self._failed(job, "invalid_param", f"params.models: {exc}", field="params.models")
        except Exception as exc:  # the backend must survive any job; details go to the log
            log.exception("job %s failed", job.job_id)
            self._failed(job, "job_failed", f"{type(exc).__name__}: {exc}")

    def _members(self, job: Job):
        """[(Components, weight)] and a name for the result's sidecar."""
        p = job.params
        if p["models"]:  # model ensemble: ε = Σ w_m ε_m
            members = [(self.models.get(m["name"]), m["weight"]) for m in p["models"]]
            name = "+".join(f"{m['name']}*{m['weight']:g}" for m in p["models"])
        else:
            members, name = [(self.models.get(p["model"]), 1.0)], self.models.resolve(p["model"])
        for components, _ in members:  # the embeddings folder's words, new files included
            self._add_embeddings(job, components)
        return members, name

    def _add_embeddings(self, job: Job, components):
        """Add new or changed embedding files to a model; a file that does not fit it is a warning."""
        for message in self.embeddings.apply(components):
            job.emit({"type": "warning", "code": "embedding_skipped", "message": message})

    @property
    def embeddings(self):
        """The models folder's textual-inversion embeddings (embeddings.py)."""
        from .embeddings import EmbeddingLibrary, embeddings_folder

        if getattr(self, "_embeddings", None) is None:
            self._embeddings = EmbeddingLibrary(embeddings_folder(self.models.models_dir))
        return self._embeddings

    def _warn_ignored_words(self, job: Job):
        """A ``warning`` event for the prompt words each of the job's models ignores (prompt_words.py)."""
        p = job.params
        texts = [p["prompt"], *(t["text"] for t in p["prompts"] or []), *(p.get("walk_prompts") or []),
                 p["negative_prompt"]]
        for name in [m["name"] for m in p["models"]] if p["models"] else [p["model"]]:
            name = self.models.resolve(name)
            components, vocabulary = self.models.get(name), self.models.vocabulary(name)
            if vocabulary is not None:  # the embeddings' words are known too
                from .embeddings import words

                vocabulary = vocabulary | {piece for word in words(components)
                                           for piece in prompt_words.WORD.findall(word)}
            for event in prompt_words.warnings(name, components.tokenizer, texts, vocabulary):
                job.emit(event)

    def execute_image(self, job: Job):
        p = job.params
        job.emit({"type": "progress", "step": 0, "total": job.total, "stage": "loading", "eta": None})
        t0 = time.perf_counter()
        members, model_name = self._members(job)
        components = members[0][0]
        job.timings["load_s"] = round(time.perf_counter() - t0, 4)
        self._warn_ignored_words(job)
        request = build_request(job, self.models)
        check_request(request, components.unet)
        t1 = time.perf_counter()
        image = generate(members, request, on_step=self._step_callback(job, components),
                         offload=p["offload"])
        if job.cancel_requested.is_set():
            raise Cancelled()
        job.timings["generate_s"] = round(time.perf_counter() - t1, 4)
        job.emit({"type": "progress", "step": job.total, "total": job.total, "stage": "saving", "eta": 0.0})
        meta = self.store.save_result(job, image.cpu().numpy(), model_name)
        job.state = DONE
        source = input_source(job, request)
        job.emit_result(lambda output: result_frame(self.store, meta, image, output, source))
        return meta

    def execute_walk(self, job: Job):
        """Frames in batches; each is written and streamed as soon as it is done. Cancel stops
        after the current batch; frames already on disk (a resumed job) are not made again."""
        p = job.params
        job.emit({"type": "progress", "step": 0, "total": p["frames"], "stage": "loading", "eta": None})
        members, model_name = self._members(job)
        components = members[0][0]
        self._warn_ignored_words(job)
        request = build_request(job, self.models)
        check_request(request, components.unet)
        with lora.held([m for m, _ in members], request):  # the walk's embeddings are made here, with them
            return self._walk_frames(job, members, model_name, request)

    def _walk_frames(self, job: Job, members, model_name: str, request: GenerationRequest):
        p = job.params
        components = members[0][0]
        plan = WalkPlan(components, request)
        on_disk = set(self.store.frames_done(job.job_id, p["frames"]))
        todo = [k for k in range(p["frames"]) if k not in on_disk]
        done = p["frames"] - len(todo)
        timer, started = StepTimer(), time.perf_counter()
        image = None
        for first in range(0, len(todo), p["batch_size"]):
            if job.cancel_requested.is_set():
                raise Cancelled()
            ks = todo[first:first + p["batch_size"]]
            request.frame_noise, request.frame_embeds = plan.batch(ks)
            images = generate(members, request, offload=p["offload"])
            for k, image in zip(ks, images):
                path = self.store.save_frame(job, k, image.cpu().numpy())
                done += 1
                job.step = done
                job.emit({"type": "frame", "index": k, "frames": p["frames"], "done": done, "path": str(path)},
                         {"image": to_rgba(image, p["output_dtype"], p["flip_y"], p["linear"])})
            fresh = done - (p["frames"] - len(todo))
            job.emit({"type": "progress", "step": done, "total": p["frames"], "stage": "frames",
                      "eta": round(timer.eta(fresh, len(todo)), 3)}, coalesce=True)
        job.timings["generate_s"] = round(time.perf_counter() - started, 4)
        last = self.store.frame_path(job.job_id, p["frames"] - 1)
        if image is None:  # everything was on disk already
            image = torch.from_numpy(np.asarray(Image.open(last).convert("RGB"), dtype=np.float32) / 255.0)
        meta = self.store.save_result(job, image.cpu().numpy(), model_name)
        meta.update(frames=p["frames"], fps=p["fps"], folder=str(self.store.job_dir(job.job_id)))
        self.store.save_meta(job.job_id, meta)
        job.state = DONE
        job.emit_result(lambda output: result_frame(self.store, meta, image, output))
        return meta

    def execute_tiled(self, job: Job):
        """Mosaic, detail pass, region enhance: tile tasks in batches, every tile kept on disk (tile_jobs.py)."""
        from .tile_jobs import EXECUTORS as TILED

        return TILED[job.kind](self, job)

    def execute_compress(self, job: Job):
        """The latent codec's encoder: the file, and the image it decodes to, both kept as the result."""
        from . import latent_codec as lc
        from .encoding import as_sent, image_alpha, image_tensor, with_alpha

        p = job.params
        job.emit({"type": "progress", "step": 0, "total": 1, "stage": "loading", "eta": None})
        name = self.models.resolve(p["model"])
        components = self.models.get(name)
        image = image_tensor(job.inputs["init_image"], **as_sent(p)).numpy()
        job.emit({"type": "progress", "step": 0, "total": 1, "stage": "encode", "eta": None})
        settings = lc.CodecSettings(p["bits"], p["palette"], p["dither"], p["seamless"])
        data = _codec(lc.compress, components, image, settings, model=name, field="params")
        decoded = _codec(lc.decompress, components, data, 0, model_name=name, field="params")
        return self._codec_result(job, decoded, name, data)

    def execute_decompress(self, job: Job):
        """The latent codec's decoder: the file's image, with the model it names unless another is asked."""
        from . import latent_codec as lc

        p = job.params
        data = from_rows(job.inputs["latent_file"], p["latent_bytes"])
        header, _ = _codec(lc.read_header, data, field="arrays.latent_file")
        name = p["model"] or header["model"] or self.models.default
        if name not in self.models.sources:
            raise ProtocolError("invalid_param", f"the latent file was made with model {name!r}, which is not "
                                "served here: serve it, or name a model of the same latent family in params.model",
                                field="params.model", allowed=self.models.names())
        components = self.models.get(name)
        _codec(lc.check_family, components, header, name, field="params.model")

        def on_step(step, total):
            job.step, job.total = step, total
            if job.cancel_requested.is_set():
                raise Cancelled()
            job.emit({"type": "progress", "step": step, "total": total, "stage": "denoise", "eta": None},
                     coalesce=True)

        image = _codec(lc.decompress, components, data, p["denoise_steps"], model_name=name, on_step=on_step,
                       field="arrays.latent_file")
        return self._codec_result(job, image, name)

    def execute_teach(self, job: Job):
        """Textual inversion (teach.py): progress and previews as it learns; cancel leaves a checkpoint
        in the job's folder that a resumed job continues from; the word is saved into the embeddings
        folder and added to the model, usable from the next job on."""
        from . import teach

        p = job.params
        job.emit({"type": "progress", "step": 0, "total": p["train_steps"], "stage": "loading", "eta": None})
        name = self.models.resolve(p["model"])
        components = self.models.get(name)
        self._add_embeddings(job, components)
        images = [image_tensor(job.inputs[n], **as_sent(p)) for n in protocol.CONCEPT_ARRAYS if n in job.inputs]
        settings = teach.TeachSettings(p["word"], p["initializer"], p["train_steps"], p["learning_rate"],
                                       p["vectors"], p["preview_every"], p["seed"], p["width"], p["height"])
        folder = self.store.job_dir(job.job_id)
        checkpoint_path = folder / teach.CHECKPOINT
        checkpoint = torch.load(checkpoint_path, weights_only=True) if checkpoint_path.exists() else None
        def on_choose(made, planned):  # the automatic initializer's images: Stop works there too
            if job.cancel_requested.is_set():
                raise Cancelled()
            job.emit({"type": "progress", "step": min(made, planned), "total": planned, "stage": "choosing",
                      "eta": None}, coalesce=True)

        teacher = teach.Teacher(components, settings, images, checkpoint, self.models.vocabulary(name), on_choose)
        job.total, timer = p["train_steps"], teach.Timer(teacher.step)
        started = time.perf_counter()

        def on_step(step, loss):
            job.step = step
            if job.cancel_requested.is_set():
                raise Cancelled()
            job.emit({"type": "progress", "step": step, "total": job.total, "stage": "teach", "loss": round(loss, 6),
                      "eta": round(timer.eta(step, job.total), 3)}, coalesce=True)

        def on_preview(step, image):
            job.emit({"type": "preview", "step": step, "width": image.shape[1], "height": image.shape[0],
                      "flip_y": p["flip_y"], "linear": p["linear"], "stage": "teach"},
                     {"image": to_rgba(image, p["output_dtype"], p["flip_y"], p["linear"])})

        def on_checkpoint(state):
            folder.mkdir(parents=True, exist_ok=True)
            tmp = checkpoint_path.with_suffix(".tmp")
            torch.save(state, tmp)
            tmp.replace(checkpoint_path)

        rows, image = teacher.run(on_step, on_preview, on_checkpoint)
        job.timings["teach_s"] = round(time.perf_counter() - started, 4)
        path = teach.save_embedding(self.embeddings.folder, p["word"], rows)
        for message in self.embeddings.apply(components):
            log.warning("after teaching: %s", message)
        meta = self.store.save_result(job, image.cpu().numpy(), name)
        meta.update(word=p["word"], embedding=str(path), losses=teacher.losses[-1:],
                    initializer=teacher.initializer)
        self.store.save_meta(job.job_id, meta)
        job.state = DONE
        job.emit_result(lambda output: result_frame(self.store, meta, image, output))
        return meta

    def execute_upscale(self, job: Job):
        """Tiled model upscaling: every tile is kept in the job's folder as it is done, so cancel keeps
        them and a resumed job makes only the missing ones."""
        from . import upscale as up
        from .encoding import as_sent, image_alpha, image_tensor, with_alpha

        p = job.params
        self.upscalers.check_job(p)  # the server checked at submit; a resumed job's backend may serve others
        name = self.upscalers.resolve(p["upscaler"])
        job.emit({"type": "progress", "step": 0, "total": job.total, "stage": "loading", "eta": None})
        net = self.upscalers.get(name)
        image = image_tensor(job.inputs["init_image"], **as_sent(p)).numpy()
        wrap_x, wrap_y = "x" in p["seamless"], "y" in p["seamless"]
        tiles = up.TileStore(self.store.job_dir(job.job_id) / "tiles",
                             up.fingerprint(image, name, self.upscalers.digest(name), p["tile_size"],
                                            p["tile_overlap"], p["seamless"]))
        job.total = len(up.plan_tiles(*image.shape[:2], p["tile_size"], p["tile_overlap"], wrap_x, wrap_y))
        timer, started, loaded = StepTimer(), time.perf_counter(), set()

        def load_tile(tile):
            output = tiles.load(tile)
            if output is not None and output.shape != (tile.y.length * net.scale, tile.x.length * net.scale, 3):
                output = None  # a damaged or foreign file: made again (and saved over)
            if output is not None:
                loaded.add(tile.name)
            return output

        def on_tile(tile, output, done, total):
            if tile.name not in loaded:
                tiles.save(tile, output)
            job.step = done
            job.emit({"type": "progress", "step": done, "total": total, "stage": "tiles",
                      "eta": round(timer.eta(max(tiles.made, 1), total - done + tiles.made), 3)}, coalesce=True)
            if job.cancel_requested.is_set() and done < total:
                raise Cancelled()

        result = up.upscale_to(net, image, p["factor"], p["tile_size"], p["tile_overlap"], wrap_x, wrap_y,
                               on_tile=on_tile, load_tile=load_tile)
        alpha = image_alpha(job.inputs["init_image"], p["input_flip_y"])
        result = with_alpha(result, up.upscale_alpha(alpha, p["factor"], wrap_x, wrap_y))
        job.timings["upscale_s"] = round(time.perf_counter() - started, 4)
        image = torch.from_numpy(result)
        meta = self.store.save_result(job, result, name)
        meta.update(tiles=job.total, tiles_made=tiles.made)
        self.store.save_meta(job.job_id, meta)
        tiles.clear()
        job.state = DONE
        job.emit_result(lambda output: result_frame(self.store, meta, image, output))
        return meta

    def _codec_result(self, job: Job, image, model_name: str, data: bytes | None = None):
        image = torch.from_numpy(np.ascontiguousarray(image, np.float32))
        if job.cancel_requested.is_set():
            raise Cancelled()
        meta = self.store.save_result(job, image.numpy(), model_name)
        if data is not None:
            self.store.save_file(job.job_id, "result.dlat", data)
            meta.update(attachments={"latent_file": "result.dlat"}, files=meta["files"] + ["result.dlat"])
            self.store.save_meta(job.job_id, meta)
        job.state = DONE
        job.emit_result(lambda output: result_frame(self.store, meta, image, output))
        return meta

    def _step_callback(self, job: Job, components):
        timer = StepTimer()
        interval = job.params["preview_interval"]
        last_preview = [time.perf_counter()]

        def on_step(step, total, latents):
            job.step, job.total = step, total
            if job.cancel_requested.is_set():
                raise Cancelled()
            job.emit({"type": "progress", "step": step, "total": total, "stage": "denoise",
                      "eta": round(timer.eta(step, total), 3)}, coalesce=True)
            now = time.perf_counter()
            if interval > 0 and step < total and now - last_preview[0] >= interval:
                last_preview[0] = now
                preview = latent_preview(latents, components.vae_scale_factor)
                p = job.params
                job.emit({"type": "preview", "step": step, "width": preview.shape[1], "height": preview.shape[0],
                          "flip_y": p["flip_y"], "linear": p["linear"]},
                         {"image": to_rgba(preview, p["output_dtype"], p["flip_y"], p["linear"])}, coalesce=True)

        return on_step

    def _cancelled(self, job: Job):
        job.state = CANCELLED
        self._record(job, {"job_id": job.job_id, "kind": job.kind, "state": CANCELLED, "params": job.params,
                           "step": job.step})
        job.emit({"type": "cancelled", "step": job.step})

    def cancel_unstarted(self, job: Job):
        """End a job taken off the queue before it ran (a cancel, a shutdown): saved and sent as cancelled."""
        self._cancelled(job)

    def _failed(self, job: Job, code: str, message: str, **details):
        job.state = FAILED
        job.error = {"type": "error", "code": code, "message": message,
                     **{k: v for k, v in details.items() if v is not None}}
        self._record(job, {"job_id": job.job_id, "kind": job.kind, "state": FAILED, "params": job.params,
                           "error": job.error})
        job.emit(job.error)

    def _record(self, job: Job, meta: dict):
        """Save a job's final state; if even that cannot be written the state stays in memory
        (this backend still answers for the job; after a restart it reads as lost)."""
        try:
            self.store.save_meta(job.job_id, meta)
        except OutputUnwritable as exc:
            log.error("job %s: its final state (%s) cannot be saved: %s", job.job_id, meta["state"], exc)


def _error_fields(exc: ProtocolError) -> dict:
    """A ProtocolError as keyword arguments of Worker._failed (no type, no job id)."""
    message = exc.to_message()
    return {k: v for k, v in message.items() if k not in ("type", "job_id")}


def _codec(fn, *args, field: str, **kwargs):
    """Run a latent codec call; a bad file or setting is the client's error, naming ``field``."""
    from .latent_codec import CodecError

    try:
        return fn(*args, **kwargs)
    except CodecError as exc:
        raise ProtocolError("invalid_param", str(exc), field=field) from None
