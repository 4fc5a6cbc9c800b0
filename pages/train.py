"""Train: start runs, watch them live, stop them, and compare the three methods on one chart.

Training happens in worker processes; this page only reads run folders (see ui.train_view).
Leaving the page, closing the tab or refreshing never stops a run, and ``?run=<id>`` in the URL
brings the page back to the run it was showing. Once a data set is chosen the page starts runs
with the default settings; a visit to Configure is optional.
"""

from __future__ import annotations

import streamlit as st

from transfer.core.errors import TransferError
from transfer.core.runs import ACTIVE_STATES, list_runs
from ui import cleanup_view, retrain_view, run_name_view, session, train_view
from ui.run_picker import RUN_PARAM
from ui.train_view import LIVE_SECONDS, TABLE_SECONDS, ticking

st.title("Train")
manager = session.job_manager()
# The page's three areas are laid out before anything slow runs. The live view and the runs
# table redraw on timers; their updates are addressed by position on the page, so the
# positions they draw into must exist from the first moment of every run of the page (a
# timer firing while a slow rerun had drawn only its first few elements made the browser
# reject an update addressed past the end of the page).
settings_area, live_area, runs_area = st.container(), st.container(), st.container()

with settings_area:
    run = train_view.shown_run()
    changed = retrain_view.changed_data(run)
    if changed:
        retrain_view.offer(run, *changed)
    line_area, gpus_area = st.container(), st.container()
    try:
        config, defaults = train_view.chosen_config(gpus_area)
    except TransferError as error:
        st.error(str(error))
        config, defaults = None, False

    if config is None:
        line_area.info("Choose a data set first; the default settings are a good start.")
        line_area.page_link("pages/data.py", label="Go to Data", icon=":material/folder_open:")
    else:
        line_area.markdown(train_view.settings_line(config))
        if defaults:
            line_area.caption("These are the default settings for this data set; Configure changes them if you like.")
        left, right = st.columns(2)
        # Once the data set changed since the shown run, training again and comparing is the one primary action.
        if left.button("Start training", type="secondary" if changed else "primary", icon=":material/rocket_launch:"):
            train_view.start(manager, [config])
        if right.button("Compare the three methods", icon=":material/balance:",
                        help="Trains feature transfer, fine-tuning and training from scratch on the same "
                             "pictures and split, one after another, each with its own default settings."):
            train_view.start(manager, train_view.comparison_configs(config))

if run is not None:
    st.query_params[RUN_PARAM] = run.id
    shown_active = run.state in ACTIVE_STATES
    with live_area:
        st.fragment(train_view.live_view, **ticking(LIVE_SECONDS, shown_active))(manager, run.id, shown_active)
        retrain_view.render(run)
        cleanup_view.delete_run_control(run)
        run_name_view.rename_control(run)

any_active = any(item.state in ACTIVE_STATES for item in list_runs(session.runs_dir()))
with runs_area:
    st.fragment(train_view.runs_table, **ticking(TABLE_SECONDS, any_active))(any_active, run.id if run else None)
