"""The Gradio web UI: class-conditional sampling that refines scale by scale, and zero-shot editing.

:func:`build_demo` lays out the page for already-loaded models and wraps the plain functions of
app/logic.py in request handlers that turn every failure into a short visible message:
:class:`~app.logic.InputError` and other ``UserError``s verbatim, anything else as "internal error",
logged here with its traceback. :func:`launch` serves it.

Privacy: the page reads only what the user uploads (no file-path inputs, no ``allowed_paths``),
Gradio's cache lives in a private temporary folder (mode 0700), and the theme uses system fonts so
the page fetches nothing from outside the server.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import random
from collections.abc import Callable, Sequence

from app.logic import (
    MAX_IMAGES,
    MAX_SEED,
    InputError,
    center_square,
    class_choices,
    edit_image,
    generate_images,
    generate_progressive,
    mask_from_editor,
    parse_label,
    request_settings,
    shade,
)
from app.serve import private_cache_dir
from scaffold.errors import UserError
from var.export import LoadedModel

__all__ = ["build_demo", "launch", "theme"]

log = logging.getLogger(__name__)


def _gradio():
    """Gradio, imported once GRADIO_TEMP_DIR names a private folder (some of its modules read it at import)."""
    private_cache_dir()
    import gradio

    return gradio


def _friendly(fn: Callable) -> Callable:
    """Wrap a handler: input errors become ``gr.Error`` with their message, anything else a short one."""
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

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as err:
                raise translate(err) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise translate(err) from None

    return wrapper


def theme():
    """Gradio's default look with system fonts: the default theme would fetch Google Fonts."""
    gr = _gradio()
    sans = ["ui-sans-serif", "system-ui", "sans-serif"]
    return gr.themes.Default(font=sans, font_mono=["ui-monospace", "monospace"])


def build_demo(models: Sequence[LoadedModel]):
    """The page for already-loaded models (the first is selected). Launch with :func:`launch`."""
    gr = _gradio()
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
        )

    def on_generate(model, label, num_images, seed, cfg, top_k, top_p, more_smooth):
        m = get(model)
        label = parse_label(label, m.num_classes)
        S = len(m.model.patch_nums)
        n, settings = request_settings(
            m.sampling, num_images, seed=seed, cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth
        )
        caption = m.class_names[label]
        for si, images in generate_progressive(m, label, n, settings):
            pn = m.model.patch_nums[si]
            status = f"scale {si + 1}/{S} ({pn}x{pn} tokens)" + (" - done" if si + 1 == S else "")
            yield [(im, f"{label}: {caption} · seed {settings.seed + i}") for i, im in enumerate(images)], status

    def api_generate(label, num_images, seed, cfg, top_k, top_p, model):
        m = get(model)
        label = parse_label(label, m.num_classes)
        n, settings = request_settings(m.sampling, num_images, seed=seed, cfg=cfg, top_k=top_k, top_p=top_p)
        images = generate_images(m, label, n, settings)
        return [(im, f"{label}: {m.class_names[label]} · seed {settings.seed + i}") for i, im in enumerate(images)]

    def on_edit(model, editor, label, seed, cfg, top_k, top_p, more_smooth):
        m = get(model)
        background, mask = mask_from_editor(editor, m.vae.image_size)
        image = center_square(background, m.vae.image_size)
        settings = m.sampling.replace(seed=seed, cfg=cfg, top_k=top_k, top_p=top_p, more_smooth=more_smooth)
        return shade(image, mask), edit_image(m, image, mask, label, settings)

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
                    cfg = gr.Slider(0, 10, value=s.cfg, step=0.1, label="Guidance (cfg)")
                    top_k = gr.Number(value=s.top_k, label="Top-k (0 = off)")
                    top_p = gr.Slider(0, 1, value=s.top_p, step=0.01, label="Top-p (0 = off)")
                    smooth = gr.Checkbox(value=s.more_smooth, label="more_smooth (smoother visuals)")
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
                        editor = gr.ImageEditor(
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
                            e_cfg = gr.Slider(0, 10, value=s.cfg, step=0.1, label="Guidance (cfg)")
                            e_top_k = gr.Number(value=s.top_k, label="Top-k (0 = off)")
                            e_top_p = gr.Slider(0, 1, value=s.top_p, step=0.01, label="Top-p (0 = off)")
                            e_smooth = gr.Checkbox(value=s.more_smooth, label="more_smooth")
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
            api_button = gr.Button("generate")

        shared = dict(concurrency_id="device")  # every event that runs a model shares the one device
        model_dd.change(
            _friendly(on_model),
            model_dd,
            [info, label, e_label, cfg, top_k, top_p, smooth],
            api_visibility="private",
            queue=False,
        )
        for button, box in ((dice, seed), (e_dice, e_seed)):  # a seed that any number of images can start from
            button.click(
                lambda: random.randint(0, MAX_SEED - MAX_IMAGES + 1), None, box, api_visibility="private", queue=False
            )
        go.click(
            _friendly(on_generate),
            [model_dd, label, num_images, seed, cfg, top_k, top_p, smooth],
            [gallery, status],
            api_visibility="private",
            show_progress="minimal",
            **shared,
        )
        e_go.click(
            _friendly(on_edit),
            [model_dd, editor, e_label, e_seed, e_cfg, e_top_k, e_top_p, e_smooth],
            [e_input, e_out],
            api_name="edit",
            **shared,
        )
        api_button.click(
            _friendly(api_generate),
            [api_label, api_num, api_seed, api_cfg, api_top_k, api_top_p, api_model],
            gallery,
            api_name="generate",
            api_description="Final images of one class: label (class index), num_images (1-16), seed "
            "(image i uses seed + i), cfg >= 0, top_k >= 0, 0 <= top_p <= 1, model (name as given to `var app`).",
            **shared,
        )
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo


def launch(demo, host: str = "127.0.0.1", port: int | None = 7860, block: bool = True):
    """Serve ``demo``; returns ``(app, local_url)``. Only what the user uploads is readable (no allowed_paths)."""
    _, url, _ = demo.launch(
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
