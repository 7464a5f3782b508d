"""The Gradio side of the web page (``t2v ui``): importing gradio, an optional dependency, and laying out
the page (prompt, expansion preview, generation controls, status, video and sidecar) with its buttons
wired to the callbacks it is given (made by :func:`t2v.webui.build_app` from a session)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from densecap.errors import CaptionerError

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr

INSTALL_HINT = 'pip install -e ".[ui]"'


def require_gradio():
    """The ``gradio`` module, or a :class:`CaptionerError` saying how to install it."""
    try:
        import gradio
    except ImportError as e:
        raise CaptionerError(f"the web page needs gradio, which is not installed ({e}); install it with "
                             f"{INSTALL_HINT} (or pip install \"gradio>=5,<7\")") from None
    return gradio


def lay_out_page(gr, *, title: str, header: str, defaults: dict[str, Any], can_expand: bool, queue_size: int,
                 on_expand: Callable[..., Any], on_generate: Callable[..., Any]) -> gr.Blocks:
    """The page's ``gr.Blocks`` (queued, at most ``queue_size`` requests): ``header`` as its Markdown
    heading, the controls starting at ``defaults`` (the :data:`~t2v.webui.limits.CONTROLS` names), the
    expansion controls usable when ``can_expand``. ``on_expand(prompt)`` returns (text for the model,
    expansion line, expansion state, status); ``on_generate(prompt, expand, previewed, *controls)``
    returns (video, sidecar, text for the model, expansion line, expansion state, status)."""
    d = defaults
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(header)
        previewed = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=4, placeholder="A short prompt, e.g. a red fox in the snow",
                                    elem_id="prompt")
                expand_on = gr.Checkbox(label="Expand the prompt", value=can_expand,
                                        interactive=can_expand, elem_id="expand-on")
                with gr.Row():
                    expand_btn = gr.Button("Expand", elem_id="expand-button", interactive=can_expand)
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate-button")
            with gr.Column(scale=1):
                fed_box = gr.Textbox(label="Text for the video model", lines=6, interactive=False,
                                     elem_id="expansion")
                exp_line = gr.Textbox(label="Expansion", lines=1, max_lines=3, interactive=False,
                                      elem_id="expansion-status")
        with gr.Row():
            controls = [
                gr.Number(label="Seed", value=d["seed"], precision=0, elem_id="seed"),
                gr.Number(label="Steps", value=d["num_inference_steps"], precision=0, elem_id="steps"),
                gr.Number(label="Guidance", value=d["guidance_scale"], elem_id="guidance"),
                gr.Number(label="Frames", value=d["num_frames"], precision=0, elem_id="frames"),
                gr.Number(label="Height", value=d["height"], precision=0, elem_id="height"),
                gr.Number(label="Width", value=d["width"], precision=0, elem_id="width"),
            ]
        status = gr.Textbox(label="Status", lines=2, interactive=False, elem_id="status")
        with gr.Row():
            video = gr.Video(label="Video", interactive=False, elem_id="video")
            sidecar = gr.JSON(label="Sidecar", open=True, elem_id="sidecar")

        # up to queue_size requests are taken at once: each is checked against the limits at once, and
        # waits at most busy_wait_s for the session's model lock (one model call at a time); Gradio's
        # queue refuses more
        n = queue_size
        expand_btn.click(on_expand, inputs=[prompt], outputs=[fed_box, exp_line, previewed, status],
                         concurrency_limit=n, concurrency_id="t2v-models")
        generate_btn.click(on_generate, inputs=[prompt, expand_on, previewed, *controls],
                           outputs=[video, sidecar, fed_box, exp_line, previewed, status],
                           concurrency_limit=n, concurrency_id="t2v-models")
    app.queue(max_size=n)
    return app
