"""How the training datasets address and seed a sample: ``dataset[ref]`` with a plain index or a
:class:`t2v.buckets.SampleRef`, and the random generator of one (seed, epoch, sample) that caption
dropout and random crops draw from. Shared by :class:`t2v.data.VideoTextDataset` and
:class:`t2v.cache.CachedLatentDataset`, so both answer the same way.
"""

from __future__ import annotations

import numpy as np

from t2v.buckets import SampleRef


def seeded_rng(*parts: int) -> np.random.Generator:
    """A generator seeded by ``parts`` (e.g. seed, epoch, sample index, purpose): the same draws
    in every process for the same parts."""
    return np.random.default_rng(np.random.SeedSequence([int(p) % 2**64 for p in parts]))


def resolve_ref(ref: int | SampleRef | tuple, n: int, epoch: int) -> tuple[int, int, int | None]:
    """``(index, epoch, step)`` of ``dataset[ref]`` in a dataset of ``n`` samples.

    A tuple (a :class:`SampleRef`) gives ``(index, epoch[, step])``; a plain index takes
    ``epoch`` (the dataset's current one) and no step. Negative indices count from the end, as
    for a list; an index outside ``-n..n-1`` raises :class:`IndexError`."""
    if isinstance(ref, tuple):
        i, epoch = int(ref[0]), int(ref[1])
        step = int(ref[2]) if len(ref) > 2 else None
    else:
        i, step = int(ref), None
    if not -n <= i < n:
        raise IndexError(f"sample {i} out of range ({n} samples)")
    return i % n, epoch, step
