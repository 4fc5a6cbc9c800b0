"""Seeing where the studio's jobs run: `transfer cluster` (nodes and jobs, an unreachable cluster
in one sentence), the sidebar's line on every page (back end and waiting jobs, cheap, never the
cluster's address) and, on the Train page, what a queued run waits for and where a run ran.

The back end is replaced by a fake through monkeypatch: these tests are about what is shown."""

from __future__ import annotations

import json
import socket

import pytest

from apptools import open_app, session_with_dataset
from waiting import wait_for
from transfer.cli.main import main
from transfer.core.runs import RunDir
from transfer.runtime import backends
from transfer.runtime.jobs import JobManager
from ui import sidebar


SECRET_ADDRESS = "http://10.20.30.40:8265"


class FakeBackend:
    """Answers like the job back ends do, from fixed lists; ``failure`` makes every look fail."""

    def __init__(self, kind="local", nodes=(), jobs=(), failure: Exception | None = None, reachable=True):
        self.kind = kind
        self.label = "a Ray cluster" if kind == "ray" else "this machine"
        self._nodes, self._jobs, self.failure, self.reachable = list(nodes), list(jobs), failure, reachable
        self.looks = 0

    def _look(self):
        self.looks += 1
        if self.failure:
            raise self.failure

    def overview(self) -> dict:
        self._look()
        states = [job["state"] for job in self._jobs]
        return {"kind": self.kind, "label": self.label, "waiting": states.count("waiting"),
                "running": states.count("running"), "reachable": self.reachable}

    def jobs(self) -> list[dict]:
        self._look()
        return self._jobs

    def nodes(self) -> list[dict]:
        self._look()
        return self._nodes


def job(run_id, state, node=None, waiting_for=None, project="Leaves", method="features"):
    return {"run_id": run_id, "project": project, "method": method, "job": "train", "state": state,
            "node": node, "waiting_for": waiting_for}


LAPTOP = {"node": "laptop", "alive": True, "cpus": 8.0, "gpus": 0, "memory_bytes": 16 * 2**30}
GPU_NODE = {"node": "gpu-1", "alive": True, "cpus": 32.0, "gpus": 2.0, "memory_bytes": 128 * 2**30, "head": True}
LOST_NODE = {"node": "gpu-2", "alive": False, "cpus": 32.0, "gpus": 0.5, "memory_bytes": None}


@pytest.fixture
def use_backend(monkeypatch):
    """Install a fake back end for the command and the pages; the sidebar's cache starts empty."""
    def use(backend: FakeBackend) -> FakeBackend:
        monkeypatch.setattr(backends, "job_backend", lambda: backend)
        if backend.kind == "ray":
            monkeypatch.setenv(backends.RAY_ADDRESS_ENV, SECRET_ADDRESS)
        else:
            monkeypatch.delenv(backends.RAY_ADDRESS_ENV, raising=False)
        sidebar.jobs_overview.clear()
        return backend

    yield use
    sidebar.jobs_overview.clear()


# ----------------------------------------------------------------------------- transfer cluster


def test_cluster_on_this_machine_says_so_and_lists_the_queue(use_backend, capsys):
    use_backend(FakeBackend("local", [LAPTOP], [job("20250101-a", "running", node="laptop"),
                                                job("20250101-b", "waiting")]))
    assert main(["cluster"]) == 0
    out = capsys.readouterr().out
    assert "Jobs run on this machine's queue: 1 waiting, 1 running." in out
    assert backends.RAY_ADDRESS_ENV in out  # how to send them to a cluster instead
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("node "))
    assert header.split() == ["node", "alive", "cpus", "gpus", "memory"]
    laptop = next(line for line in lines if line.startswith("laptop"))
    assert laptop.split() == ["laptop", "yes", "8", "0", "16.0", "GiB"]
    assert next(line for line in lines if line.startswith("20250101-b")).split() == \
        ["20250101-b", "Leaves", "features", "train", "waiting", "-", "-"]


def test_cluster_json_holds_the_back_end_nodes_and_jobs(use_backend, capsys):
    jobs = [job("20250101-a", "waiting", waiting_for="a machine with 1 GPU", project="Birds")]
    use_backend(FakeBackend("ray", [GPU_NODE, LOST_NODE], jobs))
    assert main(["cluster", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out.splitlines()[-1])
    backend = {"kind": "ray", "label": "a Ray cluster", "waiting": 1, "running": 0, "reachable": True}
    assert answer == {"backend": backend,
                      "nodes": [GPU_NODE, LOST_NODE], "jobs": jobs}


def test_cluster_table_shows_a_cluster_and_what_a_job_waits_for(use_backend, capsys):
    use_backend(FakeBackend("ray", [GPU_NODE, LOST_NODE],
                            [job("20250101-a", "waiting", waiting_for="a machine with 1 GPU")]))
    assert main(["cluster"]) == 0
    out = capsys.readouterr().out
    assert f"Jobs run on a Ray cluster ({SECRET_ADDRESS}): 1 waiting, 0 running." in out  # a terminal may see it
    lines = out.splitlines()
    assert next(line for line in lines if line.startswith("gpu-1")).split()[:3] == ["gpu-1", "(head)", "yes"]
    assert next(line for line in lines if line.startswith("gpu-2")).split() == ["gpu-2", "no", "32", "0.5", "-"]
    assert next(line for line in lines if line.startswith("20250101-a")).endswith("a machine with 1 GPU")


def test_cluster_without_jobs_says_so(use_backend, capsys):
    use_backend(FakeBackend("local", [LAPTOP], []))
    assert main(["cluster"]) == 0
    assert "No jobs are waiting or running on this machine." in capsys.readouterr().out


@pytest.mark.parametrize("as_json, backend", [
    (False, FakeBackend("ray", failure=ConnectionRefusedError(111, "Connection refused"))),
    (True, FakeBackend("ray", failure=ConnectionRefusedError(111, "Connection refused"))),
    (False, FakeBackend("ray", reachable=False)),  # the overview says so rather than raising
])
def test_an_unreachable_cluster_is_one_sentence(use_backend, capsys, as_json, backend):
    use_backend(backend)
    assert main(["cluster"] + (["--json"] if as_json else [])) == 2
    captured = capsys.readouterr()
    said = json.loads(captured.out.splitlines()[-1])["error"] if as_json else captured.err.strip()
    assert len(said.splitlines()) == 1 and "Traceback" not in captured.err
    assert said.startswith("Could not reach the Ray cluster at " if as_json else "error: Could not reach the Ray")
    assert SECRET_ADDRESS in said and backends.RAY_ADDRESS_ENV in said


def test_cluster_lists_this_machine_and_its_queue(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(backends.RAY_ADDRESS_ENV, raising=False)
    monkeypatch.setenv("TRANSFER_MAX_PARALLEL_JOBS", "1")
    manager = JobManager(tmp_path / "runs")
    first, second = manager.submit_all([{"job": "demo", "epochs": 100, "epoch_seconds": 1}] * 2)
    try:
        wait_for(lambda: manager.status(first)["state"] == "running", "the first run to start", timeout=60)
        assert main(["cluster", "--json"]) == 0
        answer = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert answer["backend"]["kind"] == "local" and answer["backend"]["waiting"] == 1
        assert [node["node"] for node in answer["nodes"]] == [socket.gethostname()]
        states = {job["run_id"]: (job["state"], job["node"]) for job in answer["jobs"]}
        assert states == {first.id: ("running", socket.gethostname()), second.id: ("waiting", None)}
    finally:
        for run in (second, first):
            manager.cancel(run)


def test_an_address_nobody_answers_on_is_one_sentence(monkeypatch, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv(backends.RAY_ADDRESS_ENV, address)
    assert main(["cluster"]) == 2
    said = capsys.readouterr().err.strip()
    assert len(said.splitlines()) == 1 and said.startswith(f"error: Could not reach the Ray cluster at {address}")


# ----------------------------------------------------------------------------- the sidebar line


def sidebar_captions(app) -> list[str]:
    return [caption.value for caption in app.sidebar.caption]


def every_text(app) -> str:
    """Everything the app sent to the browser, as text (to look for what must not be there)."""
    def walk(node):
        yield repr(getattr(node, "proto", ""))
        for child in getattr(node, "children", {}).values():
            yield from walk(child)

    return "\n".join(walk(app._tree))


@pytest.mark.parametrize("kind, jobs, line", [
    ("local", [job("a", "waiting"), job("b", "waiting"), job("c", "running")], "Jobs run on this machine · 2 waiting"),
    ("ray", [job("a", "waiting", waiting_for="a machine with 1 GPU")], "Jobs run on a Ray cluster · 1 waiting"),
    ("ray", [job("a", "finished")], "Jobs run on a Ray cluster · none waiting"),
])
def test_the_sidebar_says_where_jobs_run_and_how_many_wait(use_backend, kind, jobs, line):
    # app.py draws the sidebar before every page; AppTest keeps the sidebar of the first page only.
    use_backend(FakeBackend(kind, [LAPTOP], jobs))
    app = open_app()
    assert not app.exception, app.exception
    assert line in sidebar_captions(app), sidebar_captions(app)
    assert line in every_text(app) and SECRET_ADDRESS not in every_text(app)


def test_the_line_is_cached_for_a_few_seconds(use_backend):
    backend = use_backend(FakeBackend("local", [LAPTOP], [job("a", "waiting")]))
    app = open_app()
    app.switch_page("pages/data.py").run()
    app.switch_page("pages/train.py").run()
    assert not app.exception, app.exception
    assert backend.looks == 1  # three pages drawn, one look at the back end


def test_a_cluster_that_does_not_answer_is_one_short_line(use_backend):
    failure = ConnectionError(f"Failed to connect to Ray at address: {SECRET_ADDRESS}.")
    backend = use_backend(FakeBackend("ray", failure=failure))
    app = open_app()
    assert not app.exception, app.exception
    assert "Jobs run on a Ray cluster · not answering right now" in sidebar_captions(app)
    assert SECRET_ADDRESS not in every_text(app)  # neither the setting nor the error's text
    app.run()
    assert backend.looks == 1  # the failure is remembered too: a dead cluster does not slow every page


def test_a_cluster_whose_overview_says_unreachable_is_the_same_short_line(use_backend):
    use_backend(FakeBackend("ray", reachable=False))
    app = open_app()
    assert not app.exception, app.exception
    assert "Jobs run on a Ray cluster · not answering right now" in sidebar_captions(app)


def test_a_back_end_that_cannot_be_chosen_leaves_the_page_working(use_backend, monkeypatch):
    use_backend(FakeBackend("local"))

    def broken():
        raise ValueError(f"{SECRET_ADDRESS} is not an address")

    monkeypatch.setattr(backends, "job_backend", broken)
    app = open_app()
    assert not app.exception, app.exception
    assert "Jobs: the back end is not answering right now" in sidebar_captions(app)
    assert SECRET_ADDRESS not in every_text(app)


NO_RAY_CHILD = """
import sys

class RefuseRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"{name} is not to be imported by the web server")

sys.meta_path.insert(0, RefuseRay())
from apptools import open_app
app = open_app()
assert not app.exception, app.exception
print([caption.value for caption in app.sidebar.caption])
"""


def test_pages_on_this_machine_never_import_ray():
    """Without a cluster the web server does not load Ray (it is heavy, and an optional extra)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**{k: v for k, v in os.environ.items() if k != backends.RAY_ADDRESS_ENV},
           "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")])}
    done = subprocess.run([sys.executable, "-c", NO_RAY_CHILD], env=env, capture_output=True, text=True,
                          timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Jobs run on this machine · none waiting" in done.stdout


# ----------------------------------------------------------------------------- the Train page


@pytest.fixture
def session_runs(tiny_dataset, use_backend, monkeypatch):
    """A session with the tiny data set, whose runs folder the test fills by hand; the page reads
    the status files as they are (nothing looks for a worker behind them)."""
    use_backend(FakeBackend("local", [LAPTOP], []))
    monkeypatch.setattr(JobManager, "check", lambda self, run: False)  # no worker behind these runs: none is looked for
    token, workspace = session_with_dataset(tiny_dataset, {"backbone": "efficientnet_lite0", "method": "features",
                                                           "epochs": 3, "batch_size": 16, "image_size": 64})

    def add_run(**status) -> RunDir:
        run = RunDir.create(workspace / "runs", {"job": "train", "method": "features",
                                                 "backbone": "efficientnet_lite0", "epochs": 3})
        run.update_status(**status)
        return run

    return token, add_run


def show(token: str, run: RunDir):
    app = open_app("pages/train.py", token=token)
    app.query_params["run"] = run.id
    app.run()
    assert not app.exception, app.exception
    return app


def test_a_queued_run_says_what_machine_it_waits_for(session_runs):
    token, add_run = session_runs
    run = add_run(state="queued", waiting_for="a machine with 1 GPU", ray_job=None)
    app = show(token, run)
    assert app.get("progress")[0].proto.text == "Waiting for a machine with 1 GPU."
    assert not any(" on `" in caption.value for caption in app.caption)  # not placed anywhere yet


def test_a_queued_run_on_this_machine_keeps_its_place_in_the_queue(session_runs):
    token, add_run = session_runs
    run = add_run(state="queued", queue_position=2)
    app = show(token, run)
    assert app.get("progress")[0].proto.text == "Waiting for the device: place 2 in the queue."


@pytest.mark.parametrize("state, said", [("running", "running on `gpu-1`"), ("interrupted", "ran on `gpu-1`"),
                                         ("finished", "ran on `gpu-1`")])
def test_the_page_says_on_which_node_a_run_ran(session_runs, state, said):
    token, add_run = session_runs
    run = add_run(state=state, node="gpu-1", epoch=1, started_at=1.0)
    app = show(token, run)
    caption = next(c.value for c in app.caption if run.id in c.value)
    assert caption.endswith(" · " + said)
    assert app.dataframe[0].value["node"].tolist() == ["gpu-1"]


# ----------------------------------------------------------------------------- a real Ray head


@pytest.mark.slow
def test_a_ray_cluster_seen_from_the_command_the_sidebar_and_the_train_page(tiny_dataset, monkeypatch, capsys):
    """One CPU on the cluster, two runs: one runs, the other waits for a machine with a free CPU."""
    from raycluster import start_head

    address, stop = start_head(num_cpus=1)
    try:
        monkeypatch.setenv(backends.RAY_ADDRESS_ENV, address)
        sidebar.jobs_overview.clear()
        token, workspace = session_with_dataset(tiny_dataset)
        manager = JobManager(workspace / "runs")
        first, second = manager.submit_all([{"job": "demo", "epochs": 100, "epoch_seconds": 1}] * 2)
        wait_for(lambda: manager.status(first)["state"] == "running" and first.status().get("node"),
                 lambda: f"the first run to start on the cluster: {first.status()}", timeout=120)
        wait_for(lambda: manager.status(second).get("waiting_for"),
                 lambda: f"the second run to say what it waits for: {second.status()}", timeout=60)

        assert main(["cluster", "--json"]) == 0
        answer = json.loads(capsys.readouterr().out.splitlines()[-1])
        assert answer["backend"]["kind"] == "ray" and answer["backend"]["waiting"] == 1
        assert [(node["alive"], node["cpus"]) for node in answer["nodes"]] == [(True, 1)]
        jobs = {job["run_id"]: job for job in answer["jobs"]}
        assert jobs[first.id]["state"] == "running" and jobs[first.id]["node"] == answer["nodes"][0]["node"]
        assert jobs[second.id]["state"] == "waiting" and jobs[second.id]["waiting_for"] == "a machine with 1 free CPU"

        home = open_app(token=token)
        assert "Jobs run on a Ray cluster · 1 waiting" in sidebar_captions(home)
        assert address.split("//")[1] not in every_text(home)
        waiting = show(token, second)
        assert waiting.get("progress")[0].proto.text == "Waiting for a machine with 1 free CPU."
        running = show(token, first)
        caption = next(c.value for c in running.caption if first.id in c.value)
        assert caption.endswith(f" · running on `{first.status()['node']}`")
        assert address.split("//")[1] not in every_text(waiting) + every_text(running)
    finally:
        for run in (second, first):
            manager.cancel(run)
        stop()
        sidebar.jobs_overview.clear()


def test_the_sidebar_counts_no_epochs_for_a_head_that_is_fit_once(session_runs):
    token, add_run = session_runs
    add_run(state="running", epoch=0, node="laptop")
    app = open_app(token=token)
    assert not app.exception, app.exception
    said = sidebar_captions(app)
    assert any(line.endswith(": computing features and fitting the head.") for line in said), said
    assert not any("epoch" in bar.proto.text for bar in app.sidebar.get("progress"))
