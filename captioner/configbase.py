"""Strict config models, YAML loading, CLI overrides. Moved to :mod:`densecap.config` (the core shared with t2v); this name stays for compatibility."""

from densecap.config import StrictModel, flatten_dict, load_config, parse_override  # noqa: F401

__all__ = ['StrictModel', 'flatten_dict', 'load_config', 'parse_override']
