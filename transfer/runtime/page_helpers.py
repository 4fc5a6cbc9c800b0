"""What the pages need from torch, answered in a child process so the web server never loads it.

* ``blocks NAME``: how many blocks fine-tuning can unfreeze in a backbone (built on the meta
  device: structure only, no memory, no weights);
* ``preview REQUEST.json OUT.npz``: augmented copies of a few training pictures, exactly as
  training will see them.

``python -m transfer.runtime.page_helpers ...`` prints one JSON object; :func:`ask` runs it from a page.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from transfer.core.errors import TransferError

_TIMEOUT_S = 180


def ask(arguments: list[str]) -> dict:
    """Run ``python -m transfer.runtime.page_helpers arguments...`` and return its JSON answer."""
    from transfer.core.child import run_module

    try:
        done = run_module("transfer.runtime.page_helpers", arguments, timeout=_TIMEOUT_S, niced=True)
    except subprocess.TimeoutExpired:
        raise TransferError("This took too long on a busy machine; reload the page to try again.") from None
    if done.returncode != 0 or "error" in done.answer or not done.answer:
        raise TransferError(done.answer.get("error") or f"The helper process failed: {done.stderr.strip()[-300:]}")
    return done.answer


# --------------------------------------------------------------------------- block count


def block_count(backbone: str) -> int:
    """Blocks of ``backbone`` (head replaced) as :func:`transfer.models.methods.backbone_blocks` cuts it."""
    import torch

    from transfer.models.backbones import load_backbone
    from transfer.models.heads import replace_head
    from transfer.models.methods import backbone_blocks

    with torch.device("meta"):  # only the structure matters: no memory, no initialisation
        try:
            model = load_backbone(backbone, pretrained=False)
        except NotImplementedError:
            model = None
    if model is None:
        model = load_backbone(backbone, pretrained=False)
    replace_head(model, 2)
    return len(backbone_blocks(model))


def block_count_in_child(backbone: str) -> int:
    return int(ask(["blocks", backbone])["blocks"])


# --------------------------------------------------------------------------- augmentation preview


def augmentation_preview(samples: list, backbone: str, image_size: int, preset: str) -> list[list[np.ndarray]]:
    """For each sample, three augmented versions (uint8 arrays) as training will see them."""
    from transfer.data.augment import preprocessing_for, preview
    from transfer.models.backbones import get_backbone
    from transfer.data.cache import DecodedImageCache

    prep = preprocessing_for(get_backbone(backbone).preprocessing, image_size)
    arrays = [DecodedImageCache().get(sample, prep.resize_size) for sample in samples]
    return preview(arrays, prep, preset)


def augmentation_preview_in_child(samples: list, backbone: str, image_size: int, preset: str) -> list[list[np.ndarray]]:
    request = {"samples": [{"path": str(s.path), "label": s.label, "split": s.split, "sha256": s.sha256}
                           for s in samples],
               "backbone": backbone, "image_size": int(image_size), "preset": preset}
    with tempfile.TemporaryDirectory(prefix="transfer-preview-") as folder:
        request_file, answer_file = Path(folder) / "request.json", Path(folder) / "preview.npz"
        request_file.write_text(json.dumps(request))
        ask(["preview", str(request_file), str(answer_file)])
        with np.load(answer_file) as stored:
            copies = stored["copies"]  # pictures x copies x H x W x 3
    return [list(picture) for picture in copies]


def _preview_command(request_file: str, answer_file: str) -> dict:
    from transfer.data.samples import Sample

    request = json.loads(Path(request_file).read_text())
    samples = [Sample(Path(s["path"]), s["label"], s["split"], s["sha256"]) for s in request["samples"]]
    versions = augmentation_preview(samples, request["backbone"], request["image_size"], request["preset"])
    np.savez(answer_file, copies=np.stack([np.stack(copies) for copies in versions]))
    return {"pictures": len(versions)}


def main(argv: list[str]) -> int:
    try:
        if argv[:1] == ["blocks"] and len(argv) == 2:
            answer = {"blocks": block_count(argv[1])}
        elif argv[:1] == ["preview"] and len(argv) == 3:
            answer = _preview_command(argv[1], argv[2])
        else:
            answer = {"error": "usage: python -m transfer.runtime.page_helpers blocks NAME | preview REQUEST.json OUT.npz"}
    except TransferError as error:
        answer = {"error": str(error)}
    print(json.dumps(answer))
    return 1 if "error" in answer else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
