"""What creating, keeping and ending demos may cost the server and give away: exports only in a
child process, demos within their owner's quota, expired demos collected, a deleted owner's demos
revoked."""

from __future__ import annotations

import shutil

import pytest

from test_page_evaluate import trained  # noqa: F401 (the shared tiny finished run)
from test_share import exported, run  # noqa: F401
from transfer.serving import export, share
from transfer.serving.share import DemoStore, ShareError


@pytest.fixture
def run_without_exports(run):
    shutil.rmtree(run.path / "exports", ignore_errors=True)
    return run


def test_a_demo_made_by_the_web_server_never_exports_in_its_own_process(run_without_exports, monkeypatch):
    def no_export_here(*args, **kwargs):
        raise AssertionError("export_run ran in the web server's process")

    def slow_child(run_dir, format, timeout=0):
        raise export.ExportError(f"The {format} export took longer than 10 minutes and was stopped; "
                                 "try again when the machine is less busy.")

    monkeypatch.setattr(export, "export_run", no_export_here)
    monkeypatch.setattr(export, "export_in_subprocess", slow_child)
    with pytest.raises(ShareError, match="took longer than 10 minutes.*without the download"):
        DemoStore().create(run_without_exports.path, allow_download=True, exports_in_child=True)
    token, demo = DemoStore().create(run_without_exports.path, exports_in_child=True)
    assert not (demo.folder / share.ONNX_FILE).exists()  # predicted by a child process instead
    assert DemoStore().open(token).title
