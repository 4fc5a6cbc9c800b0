"""The web server renders its pages without loading torch (issue 12).

One fresh interpreter, with ``torch``, ``timm`` and ``torchvision`` made unimportable, renders
Home, Data, Configure (features and fine-tuning), Train, Evaluate and Predict through AppTest,
plus a demo link's page, for a session that has a data set and a finished run. Any page that
imports torch fails with the ImportError; the child also reports that none of them was loaded.
Work that needs torch (the augmentation preview, counting blocks) runs in child processes of
its own, which this test allows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from pictures import write_class_folders

from transfer.runtime.access import issue_session_token, session_dir
from transfer.training.config import TrainConfig
from transfer.analysis.evaluate import PREDICTIONS_FILE
from transfer.core.runs import FINISHED, RunDir
from transfer.core.files import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"red": 6, "green": 6}
PAGES = ["pages/home.py", "pages/data.py", "pages/configure.py", "pages/train.py", "pages/evaluate.py",
         "pages/predict.py"]

CHILD = textwrap.dedent('''
    import json, sys

    BLOCKED = ("torch", "timm", "torchvision")

    class RefuseTorch:
        """Makes torch and friends unimportable: a page that needs them fails loudly."""

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} must not be imported while rendering a page")
            return None

    sys.meta_path.insert(0, RefuseTorch())
    sys.path.insert(0, sys.argv[1] + "/tests")
    from apptools import open_app

    token, run_id, pages = sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    results = {}

    def record(name, app):
        problems = [e.message + "".join(e.stack_trace) for e in app.exception] + [e.value for e in app.error]
        results[name] = problems

    for page in pages:
        record(page, open_app(page, token=token))
    app = open_app("pages/configure.py", token=token)
    app.radio(key="method").set_value("finetune").run()
    record("pages/configure.py (finetune)", app)
    from streamlit.testing.v1 import AppTest
    app = AppTest.from_file(sys.argv[1] + "/app.py", default_timeout=60)
    app.query_params["s"], app.query_params["run"] = token, run_id
    app.run()
    app.switch_page("pages/train.py").run()
    record("pages/train.py (?run=)", app)
    demo = AppTest.from_file(sys.argv[1] + "/app.py", default_timeout=60)
    demo.query_params["demo"] = "not-a-token"
    demo.run()
    results["demo link"] = [e.message + "".join(e.stack_trace) for e in demo.exception]
    if not any("not valid" in e.value for e in demo.error):
        results["demo link"].append("no sentence for an unknown demo link")
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"pages": results, "loaded": loaded}))
''')


def finished_run(workspace: Path, dataset: Path) -> RunDir:
    """A finished feature-transfer run as the trainer leaves it (config, status, events, labels,
    validation predictions), written directly: this test is about pages, not training."""
    config = TrainConfig.for_method("features", dataset=str(dataset), epochs=2, image_size=64)
    run = RunDir.create(workspace / "runs", config.to_dict())
    run.write_labels(list(CLASSES))
    for epoch, accuracy in ((1, 0.75), (2, 1.0)):
        run.append_event({"type": "epoch", "epoch": epoch, "loss": 0.5 / epoch, "accuracy": accuracy,
                          "val_loss": 0.6 / epoch, "val_accuracy": accuracy, "seconds": 0.1})
    pictures = sorted((dataset / "red").iterdir())[:2] + sorted((dataset / "green").iterdir())[:2]
    predictions = [{"path": str(p), "sha256": "", "label": p.parent.name,
                    "probabilities": [0.9, 0.1] if p.parent.name == "red" else [0.3, 0.7]} for p in pictures]
    atomic_write_json(run.path / "model.json", {"weights": "model.safetensors", "classes": list(CLASSES)})
    (run.path / "model.safetensors").write_bytes(b"weights stand-in: no page reads them")
    atomic_write_json(run.path / PREDICTIONS_FILE, {"classes": list(CLASSES), "epoch": 2, "predictions": predictions})
    run.update_status(state=FINISHED, epoch=2, epochs=2, best_val_accuracy=1.0, val_accuracy=1.0,
                      message="Finished: best validation accuracy 1.000 at epoch 2.")
    return run


def test_pages_render_without_importing_torch(tmp_path, transfer_home):
    dataset = write_class_folders(tmp_path / "colours", CLASSES)
    token = issue_session_token()
    workspace = session_dir(token)
    (workspace / "dataset.json").write_text(
        json.dumps({"source": str(dataset), "name": "colours", "val_fraction": 0.25, "seed": 0}))
    run = finished_run(workspace, dataset)
    done = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), token, run.id, json.dumps(PAGES)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    failing = {page: problems for page, problems in answer["pages"].items() if problems}
    assert not failing, failing
    assert len(answer["pages"]) == len(PAGES) + 3
    assert answer["loaded"] == [], answer["loaded"]
