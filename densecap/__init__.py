"""The core shared by ``captioner`` and ``t2v``: what both sides need and neither owns.

So far: :mod:`densecap.assets` (where the presets and samples that ship with the toolkit are).
"""
