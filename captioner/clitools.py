"""Pieces shared by the ``captioner`` and ``t2v`` CLIs. Moved to :mod:`densecap.cli` and
:mod:`densecap.config` (the core shared with t2v); this name stays for compatibility."""

from densecap.cli import CLIGroup, config_options, configure_output  # noqa: F401
from densecap.config import CONFIGS_DIR, resolve_config  # noqa: F401

__all__ = ['CLIGroup', 'CONFIGS_DIR', 'config_options', 'configure_output', 'resolve_config']
