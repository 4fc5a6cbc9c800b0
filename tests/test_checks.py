"""Large data checks run in a bounded pool of separate, low-priority processes, with progress."""

from __future__ import annotations

import json

import pytest

from transfer.data import checks
from transfer.data.dataset import check_dataset
from transfer.data.report import Report


def test_small_sources_are_checked_inline_large_ones_are_not(tiny_dataset, monkeypatch):
    assert not checks.is_large(tiny_dataset)
    monkeypatch.setenv(checks.INLINE_MAX_FILES_ENV, "10")
    assert checks.is_large(tiny_dataset)


def test_a_check_in_the_pool_matches_the_inline_check_and_reports_progress(tiny_dataset):
    pool = checks.CheckPool(workers=1)
    job = pool.submit(str(tiny_dataset), 0.2, 0, "v1")
    report = job.result(timeout=120)
    assert pool.submit(str(tiny_dataset), 0.2, 0, "v1") is job, "the same content is not checked twice"
    assert job.progress() == (30, 30)
    inline = check_dataset(tiny_dataset)
    assert report.ok and report.counts == inline.counts and report.dataset.fingerprint() == inline.dataset.fingerprint()


def test_a_check_that_fails_in_its_process_becomes_a_sentence(tiny_dataset, monkeypatch):
    pool = checks.CheckPool(workers=1)
    with pytest.raises(checks.CheckFailed, match="validation fraction must be between 0 and 1"):
        pool.submit(str(tiny_dataset), 1.5, 0, "v1").result(timeout=120)
    monkeypatch.setattr(checks.sys, "executable", "/bin/false")  # a process that dies without a word
    with pytest.raises(checks.CheckFailed, match="stopped unexpectedly"):
        pool.submit(str(tiny_dataset), 0.2, 0, "v2").result(timeout=120)


def test_a_report_survives_its_trip_through_json(tiny_dataset):
    report = check_dataset(tiny_dataset)
    again = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.to_dict() == json.loads(json.dumps(report.to_dict()))
    assert again.dataset.samples[0].path.is_file()
