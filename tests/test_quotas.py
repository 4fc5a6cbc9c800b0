"""Disk limits on everything a user sends: zip bombs (per entry and whole archive), path clashes,
over-long names, the per-session quota, and a full disk (simulated) that loses nothing saved."""

from __future__ import annotations

import errno
import io
import json
import os
import random
import zipfile
from pathlib import Path

import pytest

from transfer.data import archives as data_module
from transfer.data import uploads
from transfer.cli.main import main as cli_main
from transfer.data.archives import ZipLimits, extract_zip
from transfer.data.dataset import check_dataset
from transfer.data.report import DUPLICATE_NAME, PATH_CLASH, RATIO, TOO_LONG
from transfer.data.samples import DataError
from transfer.core.quota import SESSION_QUOTA_ENV, DiskFull, DiskQuota, QuotaExceeded, session_quota_bytes

MiB = 1024**2


def zip_bytes(entries: dict[str, bytes] | list[tuple[str, bytes]], compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries.items() if isinstance(entries, dict) else entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def pictures(png, count: int = 3) -> dict[str, bytes]:
    return {f"{name}/{i}.png": png(c, i) for c, name in enumerate(("cat", "dog")) for i in range(count)}


def files_under(folder: Path) -> list[Path]:
    return [p for p in Path(folder).rglob("*") if p.is_file()]


def skip_reasons(folder: Path) -> dict[str, str]:
    return {item["path"]: item["reason"] for item in json.loads((folder / data_module.INGEST_LOG).read_text())}


# --------------------------------------------------------------------------- amplification


def test_a_zip_of_800_mib_of_zeros_is_refused_before_anything_is_written(tmp_path):
    zeros = b"\0" * MiB
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for index in range(800):
            archive.writestr(f"cats/{index}.jpg", zeros)
    bomb = buffer.getvalue()
    assert len(bomb) < 1_000_000, "the issue's 0.9 MB zip"
    with pytest.raises(DataError, match="zip bomb") as refused:
        uploads.unpack_zip_upload(bomb, tmp_path / "uploads")
    assert "times its own size" in str(refused.value) and "Traceback" not in str(refused.value)
    assert files_under(tmp_path) == [], "nothing was written"


def test_every_entry_is_ratio_checked_not_only_large_ones(tmp_path, png):
    """A 100 KiB entry of zeros (ratio ~1000:1) is skipped; the pictures beside it are kept."""
    archive = zip_bytes({**pictures(png), "cat/zeros.png": b"\0" * (100 * 1024)})
    out = extract_zip(archive, tmp_path / "out")
    assert skip_reasons(out) == {"cat/zeros.png": RATIO}
    assert not (out / "cat" / "zeros.png").exists()
    assert len(list(out.rglob("*.png"))) == 6


def test_the_whole_archive_ratio_is_checked_when_each_entry_passes(tmp_path):
    """Entries at ~165:1 each pass the per-entry limit (200:1) but not the whole archive's (100:1)."""
    rng = random.Random(0)
    entry = bytes(rng.randrange(1, 256) if i % 800 == 0 else 0 for i in range(300_000))
    archive = zip_bytes({f"a/{i}.png": entry for i in range(20)})
    info = zipfile.ZipFile(io.BytesIO(archive)).infolist()[0]
    assert 100 < info.file_size / info.compress_size < ZipLimits().max_ratio
    with pytest.raises(DataError, match="zip bomb"):
        extract_zip(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- clashes and long names


@pytest.mark.parametrize("order", ["file first", "folder first"])
def test_clashing_paths_are_skipped_and_the_good_pictures_kept(tmp_path, png, order):
    clash = {"cat/x.jpg": png(0, 50), "cat/x.jpg/y.jpg": png(0, 51)}
    names = list(clash) if order == "file first" else list(reversed(clash))
    entries = [*pictures(png).items(), *[(name, clash[name]) for name in names], ("cat/0.png", png(0, 99))]
    with pytest.warns(UserWarning, match="Duplicate name"):
        archive = zip_bytes(entries)
    folder = uploads.unpack_zip_upload(archive, tmp_path / "uploads")
    assert skip_reasons(folder) == {names[1]: PATH_CLASH, "cat/0.png": DUPLICATE_NAME}
    assert (folder / names[0]).is_file()
    report = check_dataset(folder)
    assert report.ok and sum(report.counts["cat"].values()) == 4 and sum(report.counts["dog"].values()) == 3


def test_long_names_long_paths_and_deep_folders_are_skipped_with_a_reason(tmp_path, png):
    long_name = "cat/" + "n" * 240 + ".png"
    long_path = "cat/" + "/".join(["d" * 150] * 8) + "/x.png"
    deep = "cat/" + "/".join("d" * 40) + "/x.png"
    archive = zip_bytes({**pictures(png), long_name: png(0, 10), long_path: png(0, 11), deep: png(0, 12)})
    out = extract_zip(archive, tmp_path / "out")
    reasons = skip_reasons(out)
    assert reasons == {long_name: TOO_LONG, long_path: TOO_LONG, deep: TOO_LONG}
    assert len(list(out.rglob("*.png"))) == 6


def test_what_the_os_refuses_to_write_skips_one_entry_only(tmp_path, png, monkeypatch):
    """A name the file system rejects (ENAMETOOLONG here) is one skipped entry, not a failed upload."""
    real_open = open

    def picky_open(path, mode="r", *args, **kwargs):
        if str(path).endswith("1.png") and "w" in mode:
            raise OSError(errno.ENAMETOOLONG, "File name too long")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(data_module, "open", picky_open, raising=False)
    out = extract_zip(zip_bytes(pictures(png)), tmp_path / "out")
    assert skip_reasons(out) == {"cat/1.png": "could not be written", "dog/1.png": "could not be written"}
    assert len(list(out.rglob("*.png"))) == 4


def test_transfer_check_of_a_clashing_zip_prints_sentences(tmp_path, png, capsys):
    path = tmp_path / "clash.zip"
    path.write_bytes(zip_bytes({**pictures(png), "cat/x.jpg": png(0, 60), "cat/x.jpg/y.jpg": png(0, 61)}))
    assert cli_main(["check", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "path clash" in out and "ready to train" in out


def test_transfer_check_of_a_zip_bomb_prints_a_sentence(tmp_path, capsys):
    path = tmp_path / "bomb.zip"
    path.write_bytes(zip_bytes({f"a/{i}.png": b"\0" * MiB for i in range(50)}))
    assert cli_main(["check", str(path)]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "zip bomb" in out


# --------------------------------------------------------------------------- the session quota


def test_quota_is_configurable_and_checked_from_declared_sizes_before_unpacking(tmp_path, png, monkeypatch):
    monkeypatch.setenv(SESSION_QUOTA_ENV, "0.000001")  # 1,000 bytes
    assert session_quota_bytes() == 1000
    workspace = tmp_path / "session"
    quota = DiskQuota.for_session(workspace)
    with pytest.raises(QuotaExceeded, match="quota; delete uploads or runs"):
        uploads.unpack_zip_upload(zip_bytes(pictures(png)), workspace / "uploads", quota=quota)
    assert files_under(workspace) == [] or all(p.name.startswith(".quota") for p in files_under(workspace))
    monkeypatch.setenv(SESSION_QUOTA_ENV, "lots")
    with pytest.raises(QuotaExceeded, match="positive number"):
        session_quota_bytes()


def test_quota_counts_what_the_session_already_stores(tmp_path, png):
    workspace = tmp_path / "session"
    archive = zip_bytes(pictures(png))
    need = sum(info.file_size for info in zipfile.ZipFile(io.BytesIO(archive)).infolist())
    (workspace / "runs").mkdir(parents=True)
    (workspace / "runs" / "old-model.bin").write_bytes(b"x" * 5000)
    quota = DiskQuota(workspace, 5000 + need - 1)
    with pytest.raises(QuotaExceeded):
        uploads.unpack_zip_upload(archive, workspace / "uploads", quota=quota)
    folder = uploads.unpack_zip_upload(archive, workspace / "uploads", quota=DiskQuota(workspace, 5000 + need + 10_000))
    assert len(list(folder.rglob("*.png"))) == 6


def test_quota_is_enforced_on_the_bytes_actually_written(tmp_path, png, monkeypatch):
    """Should the declared sizes pass while the writes do not fit (a header that lies, another tab
    writing meanwhile), the count of real bytes stops the unpack and removes what it wrote."""
    workspace = tmp_path / "session"
    real_budget = data_module._byte_budget

    def budget_shrunk_meanwhile(declared, target, limits, quota):
        budget = real_budget(declared, target, limits, quota)
        budget.left = declared // 2
        return budget

    monkeypatch.setattr(data_module, "_byte_budget", budget_shrunk_meanwhile)
    with pytest.raises(QuotaExceeded):
        uploads.unpack_zip_upload(zip_bytes(pictures(png)), workspace / "uploads", quota=DiskQuota(workspace, 10**9))
    assert not list((workspace / "uploads").rglob("*.png"))
    assert not [p for p in (workspace / "uploads" / "zips").iterdir()], "no half-unpacked folder"


def test_folder_uploads_and_single_pictures_respect_the_quota(tmp_path, png):
    workspace = tmp_path / "session"
    small = DiskQuota(workspace, 100)
    with pytest.raises(QuotaExceeded):
        uploads.unpack_folder_upload([("p/cat/1.png", png(0, 1)), ("p/dog/1.png", png(1, 1))],
                                     workspace / "uploads", quota=small)
    builder = uploads.builder_folder(workspace / "uploads")
    uploads.add_class(builder, "cat")
    with pytest.raises(QuotaExceeded):
        uploads.add_pictures(builder, "cat", [("1.png", png(0, 1))], small)
    assert uploads.builder_classes(builder)["cat"] == []
    added, _ = uploads.add_pictures(builder, "cat", [("1.png", png(0, 1))], DiskQuota(workspace, 10**6))
    assert added == 1


# --------------------------------------------------------------------------- a full disk


class _FillingDisk:
    """Stands in for ``open``: writes fail with ENOSPC once ``room`` bytes were written."""

    def __init__(self, room: int):
        self.room = room
        self.real_open = open

    def __call__(self, path, mode="r", *args, **kwargs):
        handle = self.real_open(path, mode, *args, **kwargs)
        if "w" not in mode:
            return handle
        disk = self
        real_write = handle.write

        class Limited:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                handle.close()

            def write(self, block):
                if len(block) > disk.room:
                    raise OSError(errno.ENOSPC, "No space left on device")
                disk.room -= len(block)
                return real_write(block)

        return Limited()


def test_a_full_disk_says_so_leaves_no_half_folder_and_keeps_earlier_uploads(tmp_path, png, monkeypatch):
    home = tmp_path / "uploads"
    earlier = uploads.unpack_zip_upload(zip_bytes(pictures(png, 2)), home)
    earlier_files = sorted(p.relative_to(earlier) for p in files_under(earlier))
    archive = zip_bytes({f"{name}/{i}.png": png(c, 10 + i) for c, name in enumerate(("cat", "dog")) for i in range(6)})
    monkeypatch.setattr(data_module, "open", _FillingDisk(room=len(png(0, 10)) * 4), raising=False)
    with pytest.raises(DiskFull, match="The disk is full"):
        uploads.unpack_zip_upload(archive, home)
    monkeypatch.undo()
    assert [p for p in (home / "zips").iterdir()] == [earlier], "no half-unpacked folder, staging removed"
    assert sorted(p.relative_to(earlier) for p in files_under(earlier)) == earlier_files, "nothing saved is lost"
    assert [u.path for u in uploads.list_uploads(home)] == [earlier]
    again = uploads.unpack_zip_upload(archive, home)  # with room again, the same zip unpacks whole
    assert len(list(again.rglob("*.png"))) == 12 and (again / data_module.COMPLETE_MARKER).exists()


def test_a_full_disk_while_adding_pictures_keeps_those_already_saved(tmp_path, png, monkeypatch):
    builder = uploads.builder_folder(tmp_path / "uploads")
    uploads.add_class(builder, "cat")
    uploads.add_pictures(builder, "cat", [("a.png", png(0, 1))])
    real_fdopen = os.fdopen
    opened = []

    def fdopen_on_a_filling_disk(fd, *args, **kwargs):
        handle = real_fdopen(fd, *args, **kwargs)
        opened.append(handle)
        if len(opened) > 1:  # the first picture of the upload fits, the second does not
            handle.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return handle

    monkeypatch.setattr(os, "fdopen", fdopen_on_a_filling_disk)
    with pytest.raises(DiskFull, match="The disk is full"):
        uploads.add_pictures(builder, "cat", [("b.png", png(0, 2)), ("c.png", png(0, 3))])
    monkeypatch.undo()
    assert len(opened) == 2
    assert [p.name for p in uploads.builder_classes(builder)["cat"]] == ["a.png"], "all of the upload or none"
    assert not [p for p in (builder / "cat").iterdir() if p.name != "a.png"], "no partial picture or temp file"


def test_a_run_does_not_start_when_the_sessions_quota_has_no_room_for_it(tmp_path):
    from transfer.runtime.jobs import RUN_ROOM_BYTES, JobManager

    workspace = tmp_path / "session"
    (workspace / "uploads").mkdir(parents=True)
    (workspace / "uploads" / "big.bin").write_bytes(b"\0" * 1000)
    quota = DiskQuota(workspace, RUN_ROOM_BYTES + 500)  # room for the upload, not for a run beside it
    manager = JobManager(workspace / "runs", quota=quota)
    with pytest.raises(QuotaExceeded, match="delete uploads or runs"):
        manager.submit({"job": "demo", "epochs": 1})
    assert not [p for p in (workspace / "runs").iterdir() if p.is_dir()]

    roomy = JobManager(workspace / "runs", quota=DiskQuota(workspace, RUN_ROOM_BYTES + 2000))
    run = roomy.submit({"job": "demo", "epochs": 1, "epoch_seconds": 0.1})
    roomy.wait(run.id, timeout=60)


def test_checkpoints_and_weights_a_run_writes_count_against_its_sessions_quota(tmp_path):
    import torch

    from transfer.runtime.jobs import RUN_ROOM_BYTES, JobManager
    from transfer.core.runs import RunDir
    from transfer.training.store import Store

    workspace = tmp_path / "session"
    runs = workspace / "runs"
    JobManager(runs, quota=DiskQuota(workspace, RUN_ROOM_BYTES + 200_000))._check_room(1)
    assert DiskQuota.left_in(runs) == DiskQuota(workspace, RUN_ROOM_BYTES + 200_000)  # what the worker reads
    DiskQuota(workspace, 200_000).leave_in(runs)
    run = RunDir.create(runs, {"job": "train"})
    store = Store(run, None, None)
    store.save_checkpoint({"epoch": 1, "module": {"w": torch.zeros(1000)}})  # about 5 KB: fits
    with pytest.raises(QuotaExceeded, match=r"checkpoint of epoch 2 .*past its 200.0 KB disk quota.*resume it"):
        store.save_checkpoint({"epoch": 2, "module": {"w": torch.zeros(100_000)}})  # 400 KB
    assert torch.load(run.checkpoint_path, weights_only=True)["epoch"] == 1  # the last one that fitted stays
    with pytest.raises(QuotaExceeded, match="model's weights"):
        store.write_weights({"w": torch.zeros(100_000)})
    assert not run.weights_path.exists()
    assert not [p for p in run.path.iterdir() if p.name.endswith(".tmp")]
