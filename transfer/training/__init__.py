"""The trainer in parts; :mod:`transfer.training.run` documents the run directory they fill.

``schedule``  learning-rate schedules, the optimizer, seeding
``tasks``     what is trained on: cached features (``FeatureTask``) or pictures (``ImageTask``)
``build``     everything before the first epoch: data, model, the task, the linear probe
``steps``     one optimizer step, shared by the epoch loop, the linear probe, the data audit's
              heads and the learning-rate finder
``reporter``  events, ETA and status
``store``     checkpoint, weights, ``model.json``, validation outputs
``loop``      the epoch loop, read top to bottom
"""

from transfer.core.errors import TransferError


class TrainingError(TransferError):
    """Training cannot go on; the message says what to change."""
