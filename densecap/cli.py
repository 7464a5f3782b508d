"""Pieces shared by the ``captioner`` and ``t2v`` CLIs: the group (--debug/--verbose, error lines,
quiet third-party libraries), config resolution and the --config/--set options."""

from __future__ import annotations

import importlib.abc
import inspect
import logging
import sys
import warnings

import click

from densecap.config import CONFIGS_DIR, resolve_config  # noqa: F401  (the CLIs take them from here)
from densecap.errors import CaptionerError


def config_options(func):
    func = click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a config value, e.g. --set keyframes.threshold=0.9 (repeatable; values are YAML).",
    )(func)
    func = click.option(
        "--config", "config", metavar="PATH|PRESET", help="YAML config file or preset name (e.g. tiny)."
    )(func)
    return func


# --------------------------------------------------------------------------------------------------
# The group of both CLIs: --debug / --verbose before or after the subcommand, quiet by default

_LOUD_LOGGERS = ("httpx", "httpcore", "urllib3", "PIL", "filelock", "fsspec", "asyncio", "matplotlib")
# Logging modules of the libraries that commands import lazily, long after the options are parsed.
_LIBRARY_LOGGING = ("transformers.utils.logging", "diffusers.utils.logging", "huggingface_hub.utils.logging")
_output = {"loud": False}


class _StderrHandler(logging.StreamHandler):
    """Writes to the ``sys.stderr`` of the moment (click's test runner swaps it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _quiet_library(module) -> None:
    """A library's logs at ERROR and no weight-loading bars (transformers, diffusers), unless loud."""
    loud = _output["loud"]
    module.set_verbosity(logging.WARNING if loud else logging.ERROR)
    if hasattr(module, "disable_progress_bar"):
        (module.enable_progress_bar if loud else module.disable_progress_bar)()


class _QuietOnImport(importlib.abc.MetaPathFinder):
    """Applies :func:`_quiet_library` to a library's logging module as it is imported."""

    def find_spec(self, name, path=None, target=None):
        if name not in _LIBRARY_LOGGING:
            return None
        for finder in sys.meta_path:
            spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _QuietingLoader(spec.loader)
                return spec
        return None


class _QuietingLoader:
    def __init__(self, loader) -> None:
        self.loader = loader

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        _quiet_library(module)


def configure_output(*, debug: bool = False, verbose: bool = False) -> None:
    """Logs on stderr: DEBUG with ``debug``; INFO, and the libraries' progress bars and warnings, with
    ``verbose``; by default warnings and errors only, with transformers, diffusers and huggingface_hub
    at ERROR, no weight-loading bars and no Python warnings (deprecations and the like)."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        root.addHandler(_StderrHandler())
    root.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)
    for name in _LOUD_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _output["loud"] = loud = debug or verbose
    for category in (DeprecationWarning, FutureWarning, UserWarning):
        warnings.filterwarnings("default" if loud else "ignore", category=category)
    for name in _LIBRARY_LOGGING:
        if name in sys.modules:
            _quiet_library(sys.modules[name])
    if not any(isinstance(f, _QuietOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietOnImport())


def _set_output(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    """--debug/--verbose given to the group or the command count for both (click shares ``ctx.meta``)."""
    key = f"densecap.{param.name}"
    ctx.meta[key] = value = bool(value or ctx.meta.get(key))
    if not ctx.resilient_parsing:
        configure_output(debug=ctx.meta.get("densecap.debug", False), verbose=ctx.meta.get("densecap.verbose", False))
    return value


def _output_options(takes=()) -> list[click.Option]:
    """--debug and --verbose; passed on to a command whose function takes ``debug`` / ``verbose``."""
    return [
        click.Option(["--debug"], is_flag=True, expose_value="debug" in takes, callback=_set_output,
                     help="Show tracebacks and debug logs."),
        click.Option(["--verbose", "-v"], is_flag=True, expose_value="verbose" in takes, callback=_set_output,
                     help="Show info logs, and the libraries' progress bars and warnings."),
    ]


class CLIGroup(click.Group):
    """The ``captioner`` and ``t2v`` group: --debug and --verbose work before and after the subcommand
    (every command added gets them), and a CaptionerError becomes one ``error:`` line and exit status 1
    (its traceback with --debug)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_output_options())

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        options = _output_options(inspect.signature(cmd.callback).parameters if cmd.callback else ())
        cmd.params = [p for p in cmd.params if p.name not in {o.name for o in options}] + options
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except CaptionerError as exc:
            if ctx.meta.get("densecap.debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
