"""``t2v ui``: a web page (Gradio) for prompt expansion and generation.

    t2v ui --config CFG [--set K=V] [--expand-config CFG | --no-expand] [--out DIR]
           [--host 127.0.0.1] [--port 7860] [--share/--no-share]

The page has a prompt box, an "Expand the prompt" checkbox, an **Expand** button that only previews the
expansion and a **Generate** button. Beside the prompt, a read-only box shows the text the video model
gets, with a status line (status, words, tokens / the text encoder's limit, tries, why it fell back,
whether it came from the cache). Seed, steps, guidance, frames, height and width start at the generate
config's values (the family's defaults where it leaves them out) and are validated by
:class:`~t2v.generate.GenerateConfig`; a bad value, or any other error, is shown in the page's status
box, never as a traceback. After a generation the page shows the video and its JSON sidecar.

Generation goes through :func:`t2v.generate.generate_videos`, so the page writes exactly what ``t2v
generate`` writes: ``OUT/<key>/000-<slug>.mp4`` and its sidecar, where ``<key>`` is a short hash of the
prompt, the text fed to the model and every setting. The same request again reuses the finished video;
changed settings go to a new folder, so nothing is overwritten. The pipeline and the expander are loaded
once, on first use, and shared by all requests; a lock keeps two requests from running either at once.

Limits (:class:`PageLimits`, ``t2v ui --limit KEY=VALUE``): steps, frames, height, width, videos per
request and prompt length are checked before a request waits for the models, and a request over one
gets a message naming it; a request waits at most ``busy_wait_s`` for the models while another runs
(then: "busy, try again"); a generation is stopped after the denoising step that passes
``time_limit_s`` (diffusers' ``callback_on_step_end``), and nothing is written for it.

Gradio is an optional dependency (``pip install -e ".[ui]"``), imported only when the page is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from pydantic import ValidationError

from densecap.errors import CaptionerError
from t2v.webui.limits import (
    _LABELS,
    CONTROLS,
    PageLimits,
    WebUIError,
    _check_prompt,
    _time_limit,
    _validation_message,
    parse_limits,
)
from t2v.webui.page import INSTALL_HINT as INSTALL_HINT
from t2v.webui.page import lay_out_page, require_gradio

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr

    from captioner.expand import ExpandConfig, Expander, Expansion
    from t2v.generate import GenerateConfig, GeneratedVideo

__all__ = ["GenerationSession", "PageLimits", "build_app", "expansion_status", "launch_app", "parse_limits",
           "require_gradio", "ui_command"]

log = logging.getLogger(__name__)


def expansion_status(e: Expansion) -> str:
    """One line about an expansion: status, words, tokens / limit, tries, cached, and why it fell back."""
    line = " · ".join(e.status_bits())
    return line + (f" — {e.reason}" if e.reason and e.status != "expanded" else "")


class GenerationSession:
    """What the page's buttons do, without Gradio: the configs, the pipeline and the expander (each
    loaded once, on first use, behind its own lock) and the output folder.

    ``expand_ref``: the name recorded as the sidecar's ``settings.expand`` when a prompt is expanded
    (the expansion config's path or preset; default: the generate config's ``expand``, else ``webui``).
    """

    def __init__(self, generate_config: GenerateConfig, expand_config: ExpandConfig | None, out_dir: str | os.PathLike,
                 *, expand_ref: str | None = None, limits: PageLimits | None = None):
        from t2v.generate import resolve_model, resolved_settings

        self.cfg = generate_config
        self.expand_config = expand_config
        self.expand_ref = expand_ref or generate_config.expand or "webui"
        self.out_dir = Path(out_dir).expanduser().resolve()
        self.resolved = resolve_model(generate_config)  # checks paths and shape before the page is served
        self.defaults = resolved_settings(generate_config, self.resolved.family)
        self._pipeline = None
        self._expander: Expander | None = None
        self.limits = limits or PageLimits()
        self._pipeline_lock = threading.Lock()
        self._expander_lock = threading.Lock()
        # one model call at a time (expansion or generation), waited for at most limits.busy_wait_s;
        # re-entrant, as a generation may expand its prompt first
        self._models = threading.RLock()

    # ---------------------------------------------------------------- defaults of the controls

    def control_defaults(self) -> dict[str, Any]:
        """Start values of the page's controls (config values, family defaults for those left out)."""
        return {"seed": self.cfg.seed, **{k: self.defaults[k] for k, _ in CONTROLS if k != "seed"}}

    @property
    def can_expand(self) -> bool:
        return self.expand_config is not None

    # ---------------------------------------------------------------- expansion

    def check_prompt(self, prompt: Any) -> str:
        """``prompt`` stripped, or a :class:`WebUIError` (empty, or over ``limits.max_prompt_chars``)."""
        prompt = _check_prompt(prompt)
        limit = self.limits.max_prompt_chars
        if len(prompt) > limit:
            raise WebUIError(f"the prompt has {len(prompt)} characters; the page's limit is {limit} "
                             "(t2v ui --limit max_prompt_chars=N)")
        return prompt

    @contextlib.contextmanager
    def models(self):
        """Holds the models' lock for a ``with`` block, after waiting at most ``limits.busy_wait_s`` for
        it (then a "busy, try again" :class:`WebUIError`)."""
        wait = self.limits.busy_wait_s
        if not self._models.acquire(timeout=wait):
            raise WebUIError(f"busy: another request is using the models (waited {wait:g} s); try again in a moment")
        try:
            yield
        finally:
            self._models.release()

    def expand(self, prompt: str) -> Expansion:
        """The expansion of ``prompt`` (the expander is loaded on first use)."""
        prompt = self.check_prompt(prompt)
        if self.expand_config is None:
            raise WebUIError("no expansion config: start the page with --expand-config CFG (e.g. tiny, default)")
        with self.models(), self._expander_lock:
            if self._expander is None:
                from t2v.expansion import load_expander

                self._expander = load_expander(self.expand_config, family=self.resolved.family,
                                               model_id=self.resolved.id, revision=self.resolved.revision)
            try:
                return self._expander.expand([prompt])[0]
            except ValueError as e:
                raise WebUIError(f"expand: {e}") from None

    # ---------------------------------------------------------------- generation

    def request_config(self, *, expand: bool = False, **values: Any) -> GenerateConfig:
        """The generate config of one request: the page's values (``CONTROLS`` names; ``None`` or
        missing: the config's) validated by :class:`~t2v.generate.GenerateConfig`."""
        from t2v.generate import GenerateConfig

        unknown = sorted(set(values) - set(_LABELS))
        if unknown:
            raise WebUIError(f"unknown settings: {', '.join(unknown)}")
        data = self.cfg.model_dump()
        for key, value in values.items():
            if value is None or (isinstance(value, str) and not value.strip()):
                continue  # left empty on the page: the config's value
            data[key] = value
        data["expand"] = self.expand_ref if expand else None
        data["overwrite"] = False
        try:
            cfg = GenerateConfig.model_validate(data)
        except ValidationError as e:
            raise WebUIError(f"invalid settings: {_validation_message(e)}") from None
        self.check_limits(cfg)
        return cfg

    def check_limits(self, cfg: GenerateConfig) -> None:
        """A :class:`WebUIError` naming every setting of ``cfg`` (the family's defaults filled in) over the
        page's limits."""
        from t2v.generate import resolved_settings

        s = resolved_settings(cfg, self.resolved.family)
        lim = self.limits
        over = [f"{_LABELS[key]} {s[key]} > {limit} ({name})"
                for key, limit, name in (("num_inference_steps", lim.max_steps, "max_steps"),
                                         ("num_frames", lim.max_frames, "max_frames"),
                                         ("height", lim.max_height, "max_height"),
                                         ("width", lim.max_width, "max_width"))
                if s[key] > limit]
        if cfg.videos_per_prompt > lim.max_videos:
            over.append(f"videos per request {cfg.videos_per_prompt} > {lim.max_videos} (max_videos)")
        if over:
            raise WebUIError(f"over the page's limits: {'; '.join(over)} (t2v ui --limit KEY=VALUE sets them)")

    def pipeline(self):
        """The loaded pipeline (loaded on first call; the caller holds the pipeline lock)."""
        if self._pipeline is None:
            from t2v.generate import load_pipeline

            self._pipeline = load_pipeline(self.cfg, self.resolved)
        return self._pipeline

    def output_folder(self, cfg: GenerateConfig, prompt: str, expansion: dict[str, Any] | None) -> Path:
        """``out_dir/<key>``: the key hashes the prompt, the text fed to the model and every setting."""
        from t2v.generate import resolve_model

        payload = {
            "prompt": prompt,
            "text": expansion["text"] if expansion else prompt,
            "expansion_key": expansion.get("key") if expansion else None,
            "config": cfg.model_dump(mode="json", exclude={"out_dir", "overwrite"}),
            "model": resolve_model(cfg).record(),
        }
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        return self.out_dir / digest.hexdigest()[:12]

    def generate(self, prompt: str, *, expand: bool = False, expansion: Expansion | dict | None = None,
                 **values: Any) -> tuple[GeneratedVideo, Expansion | None]:
        """Generate one video of ``prompt`` with the page's ``values``; returns the video and the
        expansion used. ``expansion``: an expansion of this prompt made before (the preview), used as it
        is; otherwise, with ``expand``, the prompt is expanded now."""
        from captioner.expand import Expansion
        from t2v.generate import generate_videos

        prompt = self.check_prompt(prompt)
        cfg = self.request_config(expand=expand, **values)  # every check before waiting for the models
        exp: Expansion | None = None
        with self.models():
            if expand:
                if isinstance(expansion, dict):
                    expansion = Expansion.from_dict(expansion)
                if expansion is not None and " ".join(expansion.prompt.split()) == " ".join(prompt.split()):
                    exp = expansion
                else:
                    exp = self.expand(prompt)
            record = exp.to_dict() if exp is not None else None
            folder = self.output_folder(cfg, prompt, record)
            with self._pipeline_lock:
                pipe = self.pipeline()
                stop = _time_limit(self.limits.time_limit_s)
                videos = generate_videos(cfg, [prompt], folder, expansions=[record] if record else None,
                                         pipeline=pipe, call_kwargs={"callback_on_step_end": stop})
        return videos[0], exp

    def close(self) -> None:
        """Release the expander's backend and drop the pipeline."""
        with self._expander_lock:
            if self._expander is not None:
                self._expander.close()
                self._expander = None
        with self._pipeline_lock:
            self._pipeline = None


def _error_text(exc: BaseException) -> str:
    """What the page shows for an error: the message of the project's own errors; for anything else its
    type and message (the traceback goes to the server's log)."""
    if isinstance(exc, CaptionerError):
        return f"error: {exc}"
    log.error("web page request failed", exc_info=exc)
    return f"error: unexpected {type(exc).__name__}: {exc} (the traceback is in the server's log)"


# ------------------------------------------------------------------------------------------------
# the page's event handlers (plain functions of the page's values, testable without a browser)


def handle_expand(session: GenerationSession, prompt: str) -> tuple[str, str, dict | None, str]:
    """Expand button: (text for the model, expansion status line, expansion dict for the page's state,
    status box). Errors come back in the status box; the other outputs are then left as they were
    (``None`` here; the page maps that to "no change")."""
    try:
        e = session.expand(prompt)
    except Exception as exc:  # noqa: BLE001 -- shown in the page
        return None, None, None, _error_text(exc)
    return e.text, expansion_status(e), e.to_dict(), "expanded (preview): Generate feeds this text to the model"


def handle_generate(session: GenerationSession, prompt: str, expand: bool, previewed: dict | None,
                    *values: Any) -> tuple[str | None, dict | None, str | None, str | None, dict | None, str]:
    """Generate button: (video path, sidecar record, text fed to the model, expansion status line,
    expansion dict for the page's state, status box). ``values`` follow :data:`CONTROLS`. On an error only
    the status box is set (the rest ``None``)."""
    try:
        settings = dict(zip((k for k, _ in CONTROLS), values))
        video, exp = session.generate(prompt, expand=bool(expand), expansion=previewed, **settings)
    except Exception as exc:  # noqa: BLE001 -- shown in the page
        return None, None, None, None, None, _error_text(exc)
    rec = video.record
    if exp is not None:
        fed, line, state = exp.text, expansion_status(exp), exp.to_dict()
    else:
        fed, line, state = video.pipeline_prompt or prompt.strip(), "not expanded (Expand the prompt is off)", None
    what = "reused the video made earlier with these settings:" if video.skipped else "wrote"
    size = rec.get("size") or ["?", "?"]
    seconds = f", {video.seconds:.1f} s" if video.seconds is not None else ""
    status = (f"{what} {video.path} ({rec.get('frames')} frames, {size[0]}x{size[1]}, {rec.get('fps')} fps{seconds}); "
              f"sidecar {video.sidecar}")
    return str(video.path), rec, fed, line, state, status


# ------------------------------------------------------------------------------------------------
# the page


def build_app(generate_config: GenerateConfig, expand_config: ExpandConfig | None, *, out_dir: str | os.PathLike,
              expand_ref: str | None = None, title: str = "densecap-t2v",
              limits: PageLimits | None = None) -> gr.Blocks:
    """The page (a ``gr.Blocks``; see the module doc). Launch it with :func:`launch_app` (which lets
    Gradio serve ``out_dir``) or ``app.launch(allowed_paths=[out_dir])``. The page's
    :class:`GenerationSession` is ``app.t2v_session``."""
    gr = require_gradio()
    session = GenerationSession(generate_config, expand_config, out_dir, expand_ref=expand_ref, limits=limits)
    r = session.resolved
    model = r.id + (f" + LoRA {r.lora}" if r.lora else "") + (f" + transformer {r.transformer}" if r.transformer else "")
    skip = gr.skip

    def on_expand(prompt):
        text, line, state, status = handle_expand(session, prompt)
        if state is None:
            return skip(), skip(), skip(), status
        return text, line, state, status

    def on_generate(prompt, expand, previewed, *values):
        path, rec, fed, line, state, status = handle_generate(session, prompt, expand, previewed, *values)
        if rec is None:
            return skip(), skip(), skip(), skip(), skip(), status
        return path, rec, fed, line, state, status

    header = (f"## Text to video\nModel: `{model}` ({r.family}) · outputs: `{session.out_dir}`"
              + ("" if session.can_expand else " · prompt expansion: off (no expansion config)"))
    app = lay_out_page(gr, title=title, header=header, defaults=session.control_defaults(),
                       can_expand=session.can_expand, queue_size=session.limits.queue_size,
                       on_expand=on_expand, on_generate=on_generate)
    app.t2v_session = session
    return app


def launch_app(app: gr.Blocks, *, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
               prevent_thread_lock: bool = False, **kwargs: Any):
    """``app.launch`` with the session's output folder among Gradio's allowed paths (the page serves the
    videos from there)."""
    session: GenerationSession | None = getattr(app, "t2v_session", None)
    allowed = list(kwargs.pop("allowed_paths", None) or [])
    if session is not None:
        session.out_dir.mkdir(parents=True, exist_ok=True)
        allowed.append(str(session.out_dir))
    return app.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=prevent_thread_lock,
                      allowed_paths=allowed, **kwargs)


# ------------------------------------------------------------------------------------------------
# t2v ui


@click.command("ui")
@click.option("--config", "config", metavar="PATH|PRESET", help="Generate config: YAML file or preset (tiny, wan, ...).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a generate-config value, e.g. --set model.lora_scale=0.8 (repeatable; values are YAML).")
@click.option("--expand-config", "expand_config", metavar="PATH|PRESET",
              help="Expansion config (default: the generate config's `expand`; none: no expansion).")
@click.option("--no-expand", "no_expand", is_flag=True, help="No prompt expansion on the page.")
@click.option("--out", "out", type=click.Path(path_type=Path), help="Output folder (default: the config's out_dir).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (0.0.0.0: every interface).")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(1, 65535), help="Port to serve on.")
@click.option("--share/--no-share", default=False, show_default=True,
              help="Also make a public link through Gradio's share servers.")
@click.option("--limit", "limits", multiple=True, metavar="KEY=VALUE",
              help="A limit of the page's requests (repeatable): max_steps (100), max_frames (257), max_height "
                   "(1280), max_width (1280), max_videos (4), max_prompt_chars (2000), time_limit_s (900), "
                   "busy_wait_s (30), queue_size (8).")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def ui_command(config: str | None, overrides: tuple[str, ...], expand_config: str | None, no_expand: bool,
               out: Path | None, host: str, port: int, share: bool, limits: tuple[str, ...], debug: bool) -> None:
    """Serve a web page to expand prompts and generate videos (Gradio).

    Type a prompt, preview its expansion (Expand), set seed, steps, guidance and the video's shape,
    and Generate: the page shows the video and its sidecar and writes both, as `t2v generate` does, to
    OUT/<key>/ (one folder per prompt and settings). The models load on the first request.
    """
    import sys

    from t2v.expansion import load_expand_config
    from t2v.generate import load_generate_config

    if no_expand and expand_config is not None:
        raise click.UsageError("--no-expand and --expand-config exclude each other")
    try:
        require_gradio()
        page_limits = parse_limits(limits)
        cfg = load_generate_config(config, list(overrides))
        ref = None if no_expand else (expand_config or cfg.expand)
        exp_cfg = load_expand_config(ref) if ref else None
        app = build_app(cfg, exp_cfg, out_dir=out if out is not None else cfg.out_dir, expand_ref=ref,
                        limits=page_limits)
    except CaptionerError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"serving on http://{host}:{port} (Ctrl+C to stop); outputs: {app.t2v_session.out_dir}", err=True)
    try:
        launch_app(app, host=host, port=port, share=share)
    finally:
        app.t2v_session.close()
