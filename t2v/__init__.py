"""Text-to-video side of densecap-t2v: datasets, latent caching, training and generation.

The captioning side (``captioner``) is complete for single videos; the trainer and generator are
being built (see the README's roadmap). ``t2v env`` reports what this machine offers for them.
"""

__version__ = "0.1.0"
