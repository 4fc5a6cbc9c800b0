"""The finished run's novelty reference ("None of these", see :mod:`transfer.models.novelty`).

After the last epoch the trainer hands the task here: the reference is built from the head
inputs of the training pictures *as the kept (best) model sees them*, and the validation
pictures are scored against it for the Evaluate page. Feature transfer already holds both in
memory (the cached centre-view features; the frozen backbone does not change); fine-tuning and
training from scratch run the best weights once over the chosen training pictures (at most
:data:`transfer.models.novelty.MAX_REFERENCE`) and the validation pictures, in evaluation mode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from transfer.data.augment import eval_batch
from transfer.models.novelty import Reference, build_reference, choose_reference, head_input_vectors
from transfer.training.tasks import FeatureTask, ImageTask


def novelty_of_run(task, train_targets: torch.Tensor, weights_path: Path,
                   batch_size: int) -> tuple[Reference | None, np.ndarray | None]:
    """``(reference, novelty of each validation picture)``; ``(None, None)`` when the training
    set is too small to have neighbours."""
    targets = train_targets.cpu().numpy()
    if isinstance(task, FeatureTask):
        train = task.train_features[:, 0].float().cpu().numpy()  # view 0 is the evaluation crop
        val = task.val_features.float().cpu().numpy()
        reference = build_reference(train, targets)
    else:
        chosen = choose_reference(targets)
        _load_best_weights(task.module, weights_path)
        train = _image_features(task, task.train_bank, torch.as_tensor(chosen), batch_size)
        val = _image_features(task, task.val_bank, torch.arange(len(task.val_bank)), batch_size)
        reference = build_reference(train, targets[chosen], training_pictures=len(targets))
    if reference is None:
        return None, None
    return reference, reference.score(val) if len(val) else np.zeros(0, dtype=np.float32)


def _load_best_weights(module: torch.nn.Module, weights_path: Path) -> None:
    """The loop's model holds the last epoch; the run keeps (and predicts with) the best one."""
    from safetensors.torch import load_file

    if weights_path.is_file():
        state = load_file(str(weights_path), device=str(next(module.parameters()).device))
        module.load_state_dict(state)


def _image_features(task: ImageTask, bank, indices: torch.Tensor, batch_size: int) -> np.ndarray:
    """Head inputs of the bank's pictures ``indices``, in full precision (predictions run in
    float32 too, so the reference and a prediction's features are comparable)."""
    task.module.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(indices), max(1, batch_size)):
            images = bank[indices[start:start + batch_size].to(bank.device)]
            x = eval_batch(images, task.prep).float().contiguous(memory_format=task.setup.memory_format())
            out.append(head_input_vectors(task.module, x)[1].cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 1), dtype=np.float32)
