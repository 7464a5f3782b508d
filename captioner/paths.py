"""Input/output path checks done before any model loads. Moved to :mod:`densecap.paths` (the core shared with t2v); this name stays for compatibility."""

from densecap.paths import (  # noqa: F401
    check_input,
    check_input_file,
    check_output_dir,
    check_output_file,
    write_failure,
    write_or_keep,
)

__all__ = ['check_input', 'check_input_file', 'check_output_dir', 'check_output_file', 'write_failure', 'write_or_keep']
