"""Execution engines of corpus runs: ``local`` (worker processes + threads on one machine) and
``ray`` (the same pipeline spread over a Ray cluster)."""
