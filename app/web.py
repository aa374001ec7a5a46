"""The Gradio web UI: class-conditional sampling that refines scale by scale, and zero-shot editing.

:func:`build_demo` lays out the page for already-loaded models and wraps the plain functions of
app/logic.py in request handlers that turn every failure into a short visible message:
:class:`~app.logic.InputError` and other ``UserError``s verbatim, anything else as "internal error",
logged here with its traceback. :func:`launch` serves it.

Privacy: the page reads only what the user uploads (no file-path inputs, no ``allowed_paths``),
Gradio's cache lives in a private temporary folder (mode 0700), and the theme uses system fonts so
the page fetches nothing from outside the server.

Abuse: an uploaded image's declared size and the number of painted layers are checked before any pixel is
decoded, and only the background and the first layer are decoded (:func:`checked_image_editor`); every
request that runs a model counts against its client (the logged-in user, else the address) in a
:class:`ClientLimiter`; :func:`launch` takes a list of logins.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence

from app.logic import (
    MAX_EDITOR_LAYERS,
    MAX_IMAGES,
    MAX_SEED,
    InputError,
    center_square,
    check_declared_image,
    class_choices,
    edit_image,
    generate_images,
    generate_progressive,
    image_seeds,
    mask_from_editor,
    parse_request,
    shade,
)
from app.serve import private_cache_dir
from scaffold.errors import UserError
from var.export import LoadedModel
from var.settings import SPEEDS, SamplingSettings

SPEED_INFO = "exact: the published sampler; fast and faster skip work on the finest scales (see the README)"


def speed_of(settings: SamplingSettings) -> str:
    """The named speed of a model's settings, for the page's choice ("exact" when they match none)."""
    return settings.speed() or "exact"


__all__ = ["ClientLimiter", "build_demo", "checked_image_editor", "launch", "theme"]

log = logging.getLogger(__name__)


def _gradio():
    """Gradio, imported once GRADIO_TEMP_DIR names a private folder (some of its modules read it at import)."""
    private_cache_dir()
    import gradio

    return gradio


class ClientLimiter:
    """At most `per_minute` model requests a minute and `in_flight` at once for each client (its login, else
    its address); one more is refused with a message saying when to retry. Thread-safe (Gradio runs handlers
    in worker threads)."""

    def __init__(self, per_minute: int = 30, in_flight: int = 2, clock: Callable[[], float] = time.monotonic):
        if per_minute < 1 or in_flight < 1:
            raise ValueError(f"per_minute and in_flight must be >= 1, got {per_minute} and {in_flight}")
        self.per_minute, self.in_flight, self.clock = per_minute, in_flight, clock
        self._started: dict[str, deque[float]] = defaultdict(deque)
        self._running: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    @staticmethod
    def client_of(request) -> str:
        """The key a request counts under: its login where the server asks for one, else its address."""
        if request is None:
            return "local"
        user = getattr(request, "username", None)
        if user:
            return f"user:{user}"
        client = getattr(request, "client", None)
        return f"address:{getattr(client, 'host', None) or 'unknown'}"

    @contextlib.contextmanager
    def slot(self, client: str) -> Iterator[None]:
        now = self.clock()
        with self._lock:
            started = self._started[client]
            while started and now - started[0] >= 60:
                started.popleft()
            if self._running[client] >= self.in_flight:
                raise InputError(f"this client has {self.in_flight} requests running already: wait for one to finish")
            if len(started) >= self.per_minute:
                wait = 60 - (now - started[0])
                raise InputError(f"at most {self.per_minute} requests a minute per client: retry in {wait:.0f} s")
            started.append(now)
            self._running[client] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running[client] -= 1


MAX_PENDING_EDITS = 32  # edits whose images were sent but not yet requested, kept by the editor


def checked_image_editor(**kwargs):
    """A ``gr.ImageEditor`` that checks what an edit request declares before decoding it: the background's
    size (the header's, :func:`~app.logic.check_declared_image`) and at most `MAX_EDITOR_LAYERS` layers, of
    which only the first is checked and decoded; the composite (unused) is never decoded.

    The two methods are replaced on the instance, not in a subclass: Gradio's component metaclass writes a
    ``.pyi`` stub beside the module of every component class it sees."""
    gr = _gradio()
    editor = gr.ImageEditor(**kwargs)
    accept = editor.accept_blobs

    def accept_blobs(data):
        """The page sends an edit's images ahead of the request, one part at a time: a layer's index is
        bounded (Gradio would grow a list to any index sent) and at most `MAX_PENDING_EDITS` edits wait."""
        raw = data.data.get("index")
        try:
            index = int(raw) if raw not in (None, "", "null") else None
        except (TypeError, ValueError):
            raise gr.Error(f"bad layer index {str(raw)[:20]!r}", print_exception=False) from None
        if data.data.get("type") == "layer" and (index is None or not 0 <= index < MAX_EDITOR_LAYERS):
            raise gr.Error(f"layer index {index}: at most {MAX_EDITOR_LAYERS} layers", print_exception=False)
        while len(editor.blob_storage) >= MAX_PENDING_EDITS and data.data.get("id") not in editor.blob_storage:
            editor.blob_storage.pop(next(iter(editor.blob_storage)))  # the oldest edit never sent
        return accept(data)

    def preprocess(payload):
        if payload is None:
            return None
        src = payload
        if payload.id is not None:  # sent as blobs before the request: Gradio's own cache of them
            src = editor.blob_storage.pop(payload.id, None)
        if src is None:
            return {"background": None, "layers": [], "composite": None}
        layers = [x for x in (src.layers or []) if x is not None]
        try:
            if len(layers) > MAX_EDITOR_LAYERS:
                raise InputError(f"the edit declares {len(layers)} layers: at most {MAX_EDITOR_LAYERS}")
            for f in [src.background, *layers[:1]]:
                if f is not None:
                    check_declared_image(getattr(f, "path", f))
        except InputError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return {
            "background": editor.convert_and_format_image(src.background, flatten_on_white=True),
            "layers": [editor.convert_and_format_image(layers[0])] if layers else [],
            "composite": None,
        }

    accept_blobs._is_server_fn = True  # what Gradio's component route looks for (gradio.components.base.server)
    editor.accept_blobs, editor.preprocess = accept_blobs, preprocess
    return editor


def _friendly(fn: Callable, limiter: ClientLimiter | None = None) -> Callable:
    """Wrap a handler: input errors become ``gr.Error`` with their message, anything else a short one. With a
    `limiter`, each call holds one of its client's slots (the wrapper takes Gradio's request for that)."""
    gr = _gradio()

    def translate(err: Exception) -> Exception:
        if isinstance(err, gr.Error):
            return err
        if isinstance(err, UserError):
            return gr.Error(str(err), print_exception=False)
        log.exception("request failed in %s", fn.__name__)
        return gr.Error(
            f"internal error ({type(err).__name__}); the details are in the server log", print_exception=False
        )

    n_inputs = len(inspect.signature(fn).parameters)

    def slot(args: tuple):
        """The client's slot, and the handler's own arguments: Gradio appends its request to them."""
        request = args[n_inputs] if len(args) > n_inputs else None
        held = limiter.slot(ClientLimiter.client_of(request)) if limiter else contextlib.nullcontext()
        return held, args[:n_inputs]

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args):
            try:
                held, args = slot(args)
                with held:
                    yield from fn(*args)
            except Exception as err:
                raise translate(err) from None

        wrapper = gen_wrapper
    else:

        @functools.wraps(fn)
        def wrapper(*args):
            try:
                held, args = slot(args)
                with held:
                    return fn(*args)
            except Exception as err:
                raise translate(err) from None

    if limiter is not None:  # Gradio passes its request to a parameter annotated gr.Request (the last here)
        sig = inspect.signature(fn)
        param = inspect.Parameter(
            "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation=gr.Request
        )
        wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), param])
        wrapper.__annotations__ = {**getattr(fn, "__annotations__", {}), "request": gr.Request}
    return wrapper


def theme():
    """Gradio's default look with system fonts: the default theme would fetch Google Fonts."""
    gr = _gradio()
    sans = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=sans, font_mono=["ui-monospace", "monospace"])


def sampling_controls(s: SamplingSettings, smooth_label: str) -> tuple:
    """The sampling widgets of a tab, set to the model's settings ``s``: guidance, top-k, top-p, more_smooth
    and the speed preset, in the order the handlers take them."""
    gr = _gradio()
    return (
        gr.Slider(0, 10, value=s.cfg, step=0.1, label="Guidance (cfg)"),
        gr.Number(value=s.top_k, label="Top-k (0 = off)"),
        gr.Slider(0, 1, value=s.top_p, step=0.01, label="Top-p (0 = off)"),
        gr.Checkbox(value=s.more_smooth, label=smooth_label),
        gr.Radio(choices=list(SPEEDS), value=speed_of(s), label="Speed", info=SPEED_INFO),
    )


def build_demo(models: Sequence[LoadedModel], limiter: ClientLimiter | None = None):
    """The page for already-loaded models (the first is selected). Launch with :func:`launch`. `limiter`
    counts every request that runs a model (default: 30 a minute and 2 at once per client)."""
    gr = _gradio()
    limiter = limiter or ClientLimiter()
    if not models:
        raise ValueError("build_demo needs at least one model")
    by_name: dict[str, LoadedModel] = {}
    for m in models:
        if m.name in by_name:
            raise InputError(f"model {m.name} is given twice")
        by_name[m.name] = m
    first = models[0]

    def get(name: str | None) -> LoadedModel:
        if name in (None, ""):
            return first
        if name not in by_name:
            raise InputError(f"unknown model {name!r}; this server has: {', '.join(by_name)}")
        return by_name[name]

    def edit_choices(m: LoadedModel) -> list[str]:
        return [*class_choices(m.class_names), f"{m.num_classes}: (no class: plain in-painting)"]

    def model_info(m: LoadedModel) -> str:
        return f"**{m.describe()}**"

    # Handlers. `_friendly` turns every failure into a visible one-line message.
    def on_model(model):
        m = get(model)
        s = m.sampling
        return (
            model_info(m),
            gr.Dropdown(choices=class_choices(m.class_names), value=class_choices(m.class_names)[0]),
            gr.Dropdown(choices=edit_choices(m), value=edit_choices(m)[-1]),
            s.cfg,
            s.top_k,
            s.top_p,
            s.more_smooth,
            speed_of(s),
            speed_of(s),
        )

    # Each handler parses its request once (parse_request) and hands the labels and settings on as they are.
    def captions(m: LoadedModel, labels: list[int], settings: SamplingSettings) -> list[str]:
        seeds = image_seeds(settings, len(labels))
        return [f"{c}: {m.class_names[c]} · seed {seed}" for c, seed in zip(labels, seeds)]

    def on_generate(model, label, num_images, seed, cfg, top_k, top_p, more_smooth, speed):
        m = get(model)
        labels, settings = parse_request(
            m, label, num_images, speed, seed=seed, cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth
        )
        S, names = len(m.model.patch_nums), captions(m, labels, settings)
        for si, images in generate_progressive(m, labels, settings):
            pn = m.model.patch_nums[si]
            status = f"scale {si + 1}/{S} ({pn}x{pn} tokens)" + (" - done" if si + 1 == S else "")
            yield list(zip(images, names)), status

    def api_generate(label, num_images, seed, cfg, top_k, top_p, model, speed=None):
        m = get(model)
        labels, settings = parse_request(m, label, num_images, speed, seed=seed, cfg=cfg, top_k=top_k, top_p=top_p)
        return list(zip(generate_images(m, labels, settings), captions(m, labels, settings)))

    def on_edit(model, editor, label, seed, cfg, top_k, top_p, more_smooth, speed):
        m = get(model)
        background, mask = mask_from_editor(editor, m.vae.image_size)
        image = center_square(background, m.vae.image_size)
        labels, settings = parse_request(
            m, label, 1, speed, allow_null=True, seed=seed, cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth
        )
        return shade(image, mask), edit_image(m, image, mask, labels[0], settings)

    s = first.sampling
    choices = class_choices(first.class_names)
    # delete_cache: every 30 min, drop generated and uploaded files older than an hour.
    with gr.Blocks(title="Next-scale image generation", analytics_enabled=False, delete_cache=(1800, 3600)) as demo:
        gr.Markdown("# Next-scale image generation")
        with gr.Row():
            model_dd = gr.Dropdown(
                choices=[(f"{os.path.basename(n.rstrip('/')) or n}", n) for n in by_name],
                value=first.name,
                label="Model",
                visible=len(by_name) > 1,
                interactive=True,
                scale=1,
            )
            info = gr.Markdown(model_info(first))
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"), gr.Row():
                with gr.Column(scale=1):
                    label = gr.Dropdown(
                        choices=choices,
                        value=choices[0],
                        label="Class",
                        info="type to search by name or number",
                        filterable=True,
                    )
                    num_images = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Number of images")
                    with gr.Row():
                        seed = gr.Number(value=0, label="Seed")
                        dice = gr.Button("Random seed", size="sm", scale=0, min_width=120)
                    cfg, top_k, top_p, smooth, speed = sampling_controls(s, "more_smooth (smoother visuals)")
                    go = gr.Button("Generate", variant="primary")
                with gr.Column(scale=2):
                    status = gr.Markdown("")
                    gallery = gr.Gallery(
                        label="Images",
                        columns=4,
                        format="png",
                        buttons=["download", "fullscreen"],
                        interactive=False,
                        object_fit="contain",
                        height=560,
                    )
            with gr.Tab("Edit", id="edit"):
                gr.Markdown(
                    "Upload an image, paint the region to regenerate, pick a class: in-painting, "
                    "out-painting (paint the border) and class-conditional editing are the same operation. "
                    f"The image is center-cropped and resized to {first.vae.image_size} px."
                )
                with gr.Row():
                    with gr.Column(scale=1):
                        editor = checked_image_editor(
                            label="Image and mask (paint = regenerate)",
                            type="pil",
                            image_mode="RGBA",
                            sources=["upload", "clipboard"],
                            brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=24),
                            layers=False,
                            transforms=(),
                            height=420,
                        )
                        e_choices = edit_choices(first)
                        e_label = gr.Dropdown(choices=e_choices, value=e_choices[-1], label="Class", filterable=True)
                        with gr.Row():
                            e_seed = gr.Number(value=0, label="Seed")
                            e_dice = gr.Button("Random seed", size="sm", scale=0, min_width=120)
                        with gr.Accordion("Sampling", open=False):
                            e_cfg, e_top_k, e_top_p, e_smooth, e_speed = sampling_controls(s, "more_smooth")
                        e_go = gr.Button("Edit", variant="primary")
                    with gr.Column(scale=1):
                        e_input = gr.Image(label="Input as the model sees it (tinted = regenerated)", format="png")
                        e_out = gr.Image(label="Result", format="png", buttons=["download"])

        # The API endpoint: a class index and final images only (the page's button streams every scale).
        # No Number rounds (precision=0 would turn 2.5 images into 2) or bounds its value: every value
        # reaches var.settings, the one check shared with `var sample`.
        with gr.Group(visible=False):
            api_label = gr.Number(value=0, label="label")
            api_num = gr.Number(value=1, label="num_images")
            api_seed = gr.Number(value=0, label="seed")
            api_cfg = gr.Number(value=s.cfg, label="cfg")
            api_top_k = gr.Number(value=s.top_k, label="top_k")
            api_top_p = gr.Number(value=s.top_p, label="top_p")
            api_model = gr.Textbox(value=first.name, label="model")
            api_speed = gr.Textbox(value="", label="speed")
            api_button = gr.Button("generate")

        shared = dict(concurrency_id="device")  # every event that runs a model shares the one device
        model_dd.change(
            _friendly(on_model),
            model_dd,
            [info, label, e_label, cfg, top_k, top_p, smooth, speed, e_speed],
            api_visibility="private",
            queue=False,
        )
        for button, box in ((dice, seed), (e_dice, e_seed)):  # a seed that any number of images can start from
            button.click(
                lambda: random.randint(0, MAX_SEED - MAX_IMAGES + 1), None, box, api_visibility="private", queue=False
            )
        go.click(
            _friendly(on_generate, limiter),
            [model_dd, label, num_images, seed, cfg, top_k, top_p, smooth, speed],
            [gallery, status],
            api_visibility="private",
            show_progress="minimal",
            **shared,
        )
        e_go.click(
            _friendly(on_edit, limiter),
            [model_dd, editor, e_label, e_seed, e_cfg, e_top_k, e_top_p, e_smooth, e_speed],
            [e_input, e_out],
            api_name="edit",
            **shared,
        )
        api_button.click(
            _friendly(api_generate, limiter),
            [api_label, api_num, api_seed, api_cfg, api_top_k, api_top_p, api_model, api_speed],
            gallery,
            api_name="generate",
            api_description="Final images of one class: label (class index), num_images (1-16), seed "
            "(image i uses seed + i), cfg >= 0, top_k >= 0, 0 <= top_p <= 1, model (name as given to `var app`), "
            f"speed ({', '.join(SPEEDS)}; empty: the model's).",
            **shared,
        )
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo


def launch(
    demo,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    block: bool = True,
    auth: Sequence[tuple[str, str]] | None = None,
):
    """Serve ``demo``; returns its local URL. Only what the user uploads is readable (no allowed_paths).
    `auth`: the (user, password) pairs that may log in; None serves without a login (app/serve.py refuses
    that on a non-loopback address unless told the server is public)."""
    _, url, _ = demo.launch(
        auth=list(auth) if auth else None,
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        show_error=True,  # the messages are our own short ones (see _friendly)
        share=False,
        inbrowser=False,
        ssr_mode=False,
        max_file_size="50mb",
        theme=theme(),
        quiet=not block,
    )
    return url
