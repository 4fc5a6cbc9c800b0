"""The Train page's parts: the settings a new run gets, the live view of the shown run, the
table of the session's runs and the comparison of their curves.

Training happens in worker processes; these views only read run folders, and the live views
read only the events appended since their last look.
"""

from __future__ import annotations

import time

import streamlit as st

from transfer.analysis.trust import run_accuracy
from transfer.core.errors import TransferError
from transfer.core.events import RunEvents
from transfer.core.runs import ACTIVE_STATES, FINISHED, find_run, list_runs
from transfer.models.catalogue import METHODS, get_backbone
from transfer.models.run_names import distinct_labels, run_name
from transfer.runtime.estimate import recommend_method
from transfer.training.config import TrainConfig
from ui import charts, head_fit_view, reports, session
from ui.run_picker import RUN_PARAM
from ui.gpus_view import gpus_to_use
from ui.sidebar import has_gpu

LIVE_SECONDS, TABLE_SECONDS = 2.0, 5.0
_PHASES = {"decode": "Reading pictures", "features": "Computing features once"}
STATE_ICONS = {"queued": ":material/hourglass_empty:", "running": ":material/directions_run:",
               "finished": ":material/check_circle:", "failed": ":material/cancel:", "cancelled": ":material/stop_circle:",
               "interrupted": ":material/warning:"}


# ----------------------------------------------------------------------------- starting runs


def shown_run():
    """The run the page shows: the one in the link (``?run=<id>``), else the newest."""
    runs = list_runs(session.runs_dir())
    wanted = st.query_params.get(RUN_PARAM)
    if wanted:
        try:
            return find_run(session.runs_dir(), wanted)
        except TransferError:
            st.warning("The run in this link does not belong to this session (or no longer exists).")
    return runs[0] if runs else None


def chosen_config(gpus_area) -> tuple[TrainConfig | None, bool]:
    """The settings from the Configure page (or, when it was not visited, the defaults with
    the method recommended for this data set) applied to the chosen data set and its split,
    on the GPUs chosen in ``gpus_area``; and whether they are the defaults. The config is
    validated here, where it is built, and trusted from then on."""
    choice = session.chosen_dataset()
    if choice is None:
        return None, False
    report = reports.chosen_report(choice)
    if not report.ok or report.dataset is None:
        st.error("The chosen data set has problems to fix first: " + " ".join(report.errors))
        return None, False
    dataset = report.dataset.to_dict()
    draft = session.draft_config()
    gpus = gpus_to_use(draft.get("nproc_per_node"), key="gpus", where=gpus_area)
    if not draft:
        method = recommend_method(len(report.dataset.train), len(report.dataset.classes), has_gpu()).method
        return TrainConfig.for_method(method, dataset=dataset, nproc_per_node=gpus), True
    settings = {k: v for k, v in draft.items() if k != "dataset_name"}
    return TrainConfig.from_dict({**settings, "dataset": dataset, "nproc_per_node": gpus}), False


def start(manager, configs: list[TrainConfig]) -> None:
    """Queue one run per config (validated where each was built) and show the first."""
    try:
        runs = manager.submit_all([config.to_dict() for config in configs])
    except TransferError as error:  # the session's limit of queued runs, a full disk ...
        st.error(str(error))
        return
    st.query_params[RUN_PARAM] = runs[0].id
    if len(runs) > 1:
        session.remember_comparison([run.id for run in runs])
    st.rerun()


def settings_line(config: TrainConfig) -> str:
    """What a run started now does, in one sentence."""
    trained = ""
    if config.method == "finetune":
        trained = f" (the last {config.train_blocks} blocks)" if config.train_blocks is not None else " (every block)"
    if config.method == "features" and config.hidden is None and not config.dropout:
        how = ": the new head is fit to its optimum on the cached features (no epochs needed)."
    else:
        how = f" for {config.epochs} epochs, batch {config.batch_size}, learning rate {config.lr:g}."
    return (f"**{METHODS[config.method].title}** of **{config.backbone}**{trained}{how}"
            + (f" Starting from your weights **{config.initial_weights['name']}**." if config.initial_weights else ""))


def comparison_configs(config: TrainConfig) -> list[TrainConfig]:
    """Feature transfer, fine-tuning and training from scratch on the same pictures and split,
    each with its own default settings."""
    shared = {"dataset": config.dataset, "backbone": config.backbone, "seed": config.seed,
              "nproc_per_node": config.nproc_per_node}
    # An image size chosen on Configure applies to all three; otherwise each method keeps its
    # own default (scratch trains smaller pictures, which keeps the comparison short).
    if config.image_size not in (None, get_backbone(config.backbone).preprocessing.input_size):
        shared["image_size"] = config.image_size
    return [TrainConfig.for_method(name, **shared, initial_weights=None if name == "scratch" else config.initial_weights)
            for name in METHODS]


# ----------------------------------------------------------------------------- the shown run


def events_of(run) -> RunEvents:
    """The run's events as of now; each call reads only what was appended since the last."""
    followed = st.session_state.setdefault("run_events", {})
    key = str(run.path)
    if key not in followed:
        followed[key] = RunEvents(run.path)
    return followed[key].update()


def ticking(every: float, active: bool) -> dict:
    """Fragments redraw on a timer only while something can change: with many sessions open,
    idle timers would cost the server for nothing."""
    return {"run_every": every if active else None}


def live_view(manager, run_id: str, was_active: bool) -> None:
    """The shown run, redrawn on a timer while it is queued or running: its state, progress,
    accuracy, curves, the Stop or Resume button and its event log."""
    run = find_run(session.runs_dir(), run_id)
    status = manager.status(run)  # asking also keeps the machine's queue moving
    state = status["state"]
    if was_active and state not in ACTIVE_STATES:
        st.rerun()  # the run ended: draw the page once more, without the timer
    st.subheader(f"{STATE_ICONS.get(state, '')} {run_name(run)}: {state}")
    st.caption(f"{run.config.get('method')} · {run.config.get('backbone')} · run `{run.id}`" + where_line(status))
    epochs = status.get("epochs") or run.config.get("epochs") or 1
    epoch, step, steps = status.get("epoch") or 0, status.get("step") or 0, status.get("steps") or 0
    events = events_of(run)
    latest = events.latest
    if state == "queued":
        st.progress(0.0, text=waiting_text(status))
    elif state == "running" and latest.get("type") == "progress":
        done, total = latest.get("done") or 0, latest.get("total") or 1
        st.progress(min(1.0, done / total), text=f"{_PHASES.get(latest.get('phase'), latest.get('phase'))}: "
                    f"{done}/{total} pictures, {latest.get('images_per_s') or 0:.0f} pictures/s")
    else:
        done = (epoch + (step / steps if steps and state == "running" else 0)) / epochs
        label = f"Epoch {epoch}/{epochs}" + (f", step {step}/{steps}" if steps and state == "running" else "")
        if state == "running" and status.get("eta") is not None:
            label += f", about {status['eta']:.0f} s left"
        if state == "running" and latest.get("images_per_s"):
            label += f", {latest['images_per_s']:.0f} pictures/s"
        if state == FINISHED:  # a run that stopped early on purpose is finished too: its bar is full
            fitted = head_fit_view.fit_event(events.log) is not None  # one fit, not epochs
            done, label = 1.0, "Finished: the head was fit to its optimum" if fitted else f"Finished: {label.lower()}"
        st.progress(min(1.0, done), text=label)
    accuracy = run_accuracy(run.path, status)
    metrics = st.columns(3)
    metrics[0].metric("Validation accuracy", accuracy.headline() if accuracy else "–",
                      help="Right answers on the validation pictures, which the run never trained on.")
    metrics[1].metric("Best so far", _best_count(status, accuracy))
    metrics[2].metric("Training time", duration(run.summary().get("seconds")))
    if accuracy is not None:
        st.caption(f"Validation accuracy: {accuracy.describe()}.")
        if accuracy.cross_validated:
            st.info(accuracy.describe_cross_validation(), icon=":material/calculate:")
    if status.get("message") and state not in ("running", "queued"):
        (st.error if state == "failed" else st.info)(status["message"])
    history = events.epoch_history()
    steps_now = events.steps_of_epoch(epoch + 1) if state == "running" else []
    if not head_fit_view.render(events.log, key=f"fit_{run.id}") and (history or steps_now):
        st.plotly_chart(charts.training_curves(history, steps_now), key=f"curves_{run.id}")
    if state in ACTIVE_STATES:
        if st.button("Stop", icon=":material/stop_circle:", key=f"stop_{run.id}", help="Stops after the current step; "
                     "the last finished epoch is kept."):
            _act(manager.cancel, run.id, "Stopping after the current step ...")
    elif state in ("interrupted", "cancelled", "failed") and run.checkpoint_path.exists():
        if st.button("Resume", icon=":material/play_arrow:", key=f"resume_{run.id}"):
            _act(manager.resume, run.id, "Resuming from the last finished epoch ...")
    with st.expander("Event log"):
        st.code("\n".join(_describe(e) for e in events.log) or "No events yet.", language=None)


def waiting_text(status: dict) -> str:
    """What a queued run waits for: on a cluster, the machine it asked for ("a machine with 1
    GPU") while the scheduler has not placed it; on this machine, its place in the queue."""
    if status.get("waiting_for"):
        return f"Waiting for {status['waiting_for']}."
    place = status.get("queue_position")
    return "Waiting for the device" + (f": place {place} in the queue." if place else ".")


def where_line(status: dict) -> str:
    """On which machine the run trains or trained (a cluster's node, or this machine's name)."""
    node = status.get("node")
    if not node or status.get("state") == "queued":
        return ""
    return f" · {'running' if status.get('state') == 'running' else 'ran'} on `{node}`"


def _act(action, run_id: str, note: str) -> None:
    """Stop or resume; the next refresh of the live view shows the new state."""
    try:
        action(run_id)
        st.toast(note)
    except TransferError as error:
        st.error(str(error))


def _best_count(status: dict, accuracy) -> str:
    """The best epoch's accuracy as a count on the same validation pictures."""
    best = status.get("best_val_accuracy")
    if best is None or accuracy is None or not accuracy.total:
        return "–"
    return f"{round(best * accuracy.total):,} of {accuracy.total:,}"


def duration(seconds) -> str:
    """One way to write a training time, on every part of the page: ``0.7 s``, ``12 s``, ``3 min 05 s``."""
    if seconds is None:
        return "–"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def _describe(event: dict) -> str:
    moment = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))
    details = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                        for k, v in event.items() if k not in ("time", "type") and not isinstance(v, (list, dict)))
    return f"{moment} {event.get('type')}: {details}"



# ----------------------------------------------------------------------------- runs and comparison


def runs_table(was_active: bool, shown_id: str | None) -> None:
    """This session's runs in a table, a picker of the run to show, and the comparison of runs."""
    runs = list_runs(session.runs_dir())
    if not runs:
        return
    if was_active and not any(item.state in ACTIVE_STATES for item in runs):
        st.rerun()
    st.subheader("This session's runs")
    rows = []
    names = distinct_labels(runs)
    for item in runs:
        summary = item.summary()
        status = item.status()
        accuracy = run_accuracy(item.path, status)
        rows.append({"run": names[item.id], "id": summary["id"], "state": summary["state"],
                     "method": summary["method"], "backbone": summary["backbone"],
                     "validation accuracy": accuracy.short() if accuracy else "–",
                     "training time": duration(summary["seconds"]), "node": status.get("node") or "–"})
    st.dataframe(rows, hide_index=True, width="stretch")
    ids = [r["id"] for r in rows]
    # The picker follows the run the page shows (a new run, a link, Train again), not the last pick.
    if shown_id in ids and st.session_state.get("show_run_follows") != shown_id:
        st.session_state["show_run"] = st.session_state["show_run_follows"] = shown_id
    chosen = st.selectbox("Show run", ids, index=ids.index(shown_id) if shown_id in ids else 0, key="show_run",
                          format_func=names.get)
    if chosen != shown_id:
        if st.button("Show", key="show_button"):
            st.query_params[RUN_PARAM] = chosen
            st.rerun()
    comparison_view(runs)


def comparison_view(runs) -> None:
    ended_or_running = [r for r in runs if events_of(r).epoch_history()]
    if len(ended_or_running) < 2:
        return
    st.subheader("Compare runs")
    labels = distinct_labels(ended_or_running)
    default = [i for i in session.last_comparison() if i in labels] or list(labels)[:3]
    picked = st.multiselect("Runs to overlay", list(labels), default=default, format_func=labels.get, key="compare_pick")
    if not picked:
        return
    by_id = {r.id: r for r in ended_or_running}
    series = {labels[i]: events_of(by_id[i]).epoch_history() for i in picked}
    axis = st.radio("Horizontal axis", ["epoch", "elapsed"], horizontal=True, key="compare_axis",
                    format_func=lambda a: "epochs" if a == "epoch" else "seconds of training")
    st.plotly_chart(charts.compare_curves(series, axis), key="compare_chart")
    table = []
    for run_id in picked:
        summary = by_id[run_id].summary()
        accuracy = run_accuracy(by_id[run_id].path)
        table.append({"run": labels[run_id], "state": summary["state"],
                      "validation accuracy": accuracy.describe() if accuracy else "–",
                      "training time": duration(summary["seconds"])})
    st.dataframe(table, hide_index=True, width="stretch")
