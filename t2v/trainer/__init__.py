"""The video trainer's rooms; :mod:`t2v.train` is the entry point that reads as setup -> step ->
after-step -> finish.

- ``state``: the run as the steps share it (:class:`Run`), :class:`TrainResult`, :class:`TrainingError`.
- ``sources``: where a batch's latents and conditioning come from (videos encoded on the fly, or a
  latent cache).
- ``setup``: accelerator, data loader, model (+ LoRA), optimizer, scheduler, EMA, resume.
- ``step``: one optimizer step, and what follows it (metrics, checkpoint, validation, stopping).
- ``checkpoint``: save and restore a run's state on the shared toolkit (:mod:`densecap.training`).
- ``validation``: clips generated with the weights being trained.
- ``export``: the LoRA or transformer, ``base_model.json`` and the model card.
"""
