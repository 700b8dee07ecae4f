"""Runs one job on the device: parameters in, events out, result saved before it is sent."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import torch
from PIL import Image

from dream_addon import protocol
from dream_addon.protocol import ProtocolError

from .core import (Cancelled, GenerationRequest, IncompatibleModels, PromptTerm, StepTimer, generate,
                   latent_preview, linear_to_srgb, to_rgba)
from . import prompt_words
from .modifiers import Infusion
from .walks import WalkPlan
from .jobs import CANCELLED, DONE, FAILED, RUNNING, Job, JobQueue, JobStore
from .models import ModelLoadError, ModelManager

log = logging.getLogger("generator_backend.runner")


def image_tensor(array, channels=3, linear=False, flip_y=False) -> torch.Tensor:
    """An (H, W, C) uint8 or float array as (H, W, channels) float32 sRGB in [0, 1], rows top
    to bottom (alpha dropped). ``linear``/``flip_y`` describe the array as Blender holds it."""
    image = torch.from_numpy(np.ascontiguousarray(array[..., :channels]))
    is_bytes = image.dtype == torch.uint8
    image = image.float() / 255.0 if is_bytes else image.float().clamp(0, 1)
    if flip_y:
        image = image.flip(0)
    return linear_to_srgb(image) if linear and not is_bytes else image  # uint8 arrays are always sRGB


def build_request(job: Job) -> GenerationRequest:
    """The core's request from a validated job."""
    p, inputs = job.params, job.inputs
    as_sent = {"linear": p["input_linear"], "flip_y": p["input_flip_y"]}
    init, mask = inputs.get("init_image"), inputs.get("mask")
    return GenerationRequest(
        prompt=p["prompt"], negative_prompt=p["negative_prompt"], seed=p["seed"], steps=p["steps"],
        guidance=p["guidance"], width=p["width"], height=p["height"], scheduler=p["scheduler"],
        prompts=[PromptTerm(t["text"], t["weight"], t["guidance"]) for t in p["prompts"] or []],
        ensemble_mode=p["ensemble_mode"], init_image=None if init is None else image_tensor(init, **as_sent),
        strength=p.get("strength", 1.0), mask=None if mask is None else image_tensor(mask, 1, flip_y=p["input_flip_y"])[..., 0],
        feather=p.get("feather", 0.0), tile_axes=p["seamless"],
        infusion_images=[image_tensor(inputs[n], **as_sent) for n in protocol.INFUSION_ARRAYS if n in inputs],
        infusion_weights=p["infusion_weights"] or {}, infusion_decay=p["infusion_decay"],
        infusion_cond_only=p["infusion_cond_only"], layout=p.get("layout", "off"))


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


def result_frame(store: JobStore, meta: dict, image, output: dict):
    """The ``result`` message and its image array, delivered as ``output`` asks (dtype, flip, linear)."""
    message = {"type": "result", "job_id": meta["job_id"], "width": meta["width"], "height": meta["height"],
               "seed": meta["seed"], "model": meta["model"], "timings": meta["timings"],
               "path": str(store.job_dir(meta["job_id"])), **{k: output[k] for k in ("flip_y", "linear")},
               **{k: meta[k] for k in ("frames", "fps", "folder") if k in meta}}  # walks
    return message, {"image": to_rgba(image, output["output_dtype"], output["flip_y"], output["linear"])}


class Worker(threading.Thread):
    """Takes jobs from the queue one at a time and runs them on the model manager's device."""

    def __init__(self, queue: JobQueue, models: ModelManager, store: JobStore):
        super().__init__(name="dream-worker", daemon=True)
        self.queue, self.models, self.store = queue, models, store

    def run(self):
        while (job := self.queue.take()) is not None:
            try:
                self.execute(job)
            finally:
                self.queue.done()
                for queued, position in self.queue.positions():
                    queued.emit({"type": "queued", "position": position})

    def execute(self, job: Job):
        if job.cancel_requested.is_set():
            return self._cancelled(job)
        if job.kind == "walk":
            return self._guarded(job, self.execute_walk)
        return self._guarded(job, self.execute_image)

    def _guarded(self, job: Job, run):
        """Run a job; every failure becomes its error event, and the worker lives on."""
        job.state = RUNNING
        job.emit({"type": "started", "total": job.total})
        try:
            return run(job)
        except Cancelled:
            return self._cancelled(job)
        except ModelLoadError as exc:
            self._failed(job, "model_load_failed", str(exc))
        except ProtocolError as exc:
            self._failed(job, exc.code, exc.message, field=exc.field, allowed=exc.allowed)
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
            return members, "+".join(f"{m['name']}*{m['weight']:g}" for m in p["models"])
        return [(self.models.get(p["model"]), 1.0)], self.models.resolve(p["model"])

    def _warn_ignored_words(self, job: Job):
        """A ``warning`` event for the prompt words each of the job's models ignores (prompt_words.py)."""
        p = job.params
        texts = [p["prompt"], *(t["text"] for t in p["prompts"] or []), *(p.get("walk_prompts") or []),
                 p["negative_prompt"]]
        for name in [m["name"] for m in p["models"]] if p["models"] else [p["model"]]:
            name = self.models.resolve(name)
            for event in prompt_words.warnings(name, self.models.get(name).tokenizer, texts,
                                               self.models.vocabulary(name)):
                job.emit(event)

    def execute_image(self, job: Job):
        p = job.params
        job.emit({"type": "progress", "step": 0, "total": job.total, "stage": "loading", "eta": None})
        t0 = time.perf_counter()
        members, model_name = self._members(job)
        components = members[0][0]
        job.timings["load_s"] = round(time.perf_counter() - t0, 4)
        self._warn_ignored_words(job)
        request = build_request(job)
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
        job.emit_result(lambda output: result_frame(self.store, meta, image, output))
        return meta

    def execute_walk(self, job: Job):
        """Frames in batches; each is written and streamed as soon as it is done. Cancel stops
        after the current batch; frames already on disk (a resumed job) are not made again."""
        p = job.params
        job.emit({"type": "progress", "step": 0, "total": p["frames"], "stage": "loading", "eta": None})
        members, model_name = self._members(job)
        components = members[0][0]
        self._warn_ignored_words(job)
        request = build_request(job)
        check_request(request, components.unet)
        plan = WalkPlan(components, p)
        todo = [k for k in range(p["frames"]) if k not in set(self.store.frames_done(job.job_id, p["frames"]))]
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
        self.store.save_meta(job.job_id, {"job_id": job.job_id, "kind": job.kind, "state": CANCELLED,
                                          "params": job.params, "step": job.step})
        job.emit({"type": "cancelled", "step": job.step})

    def _failed(self, job: Job, code: str, message: str, **details):
        job.state = FAILED
        job.error = {"type": "error", "code": code, "message": message,
                     **{k: v for k, v in details.items() if v is not None}}
        self.store.save_meta(job.job_id, {"job_id": job.job_id, "kind": job.kind, "state": FAILED,
                                          "params": job.params, "error": job.error})
        job.emit(job.error)
