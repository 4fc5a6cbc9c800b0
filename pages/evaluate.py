"""Evaluate: where a finished run is right and wrong, on its validation pictures.

Accuracy, the confusion matrix (counts or shares), precision, recall and F1 per class, the
pictures the model got most wrong, and the training curves (ui.evaluate_view). All numbers come
from the run's validation predictions (transfer.analysis.evaluate); no model is loaded here.
"""

from __future__ import annotations

import streamlit as st

from transfer.analysis.evaluate import EvaluationNotReady
from ui import audit_view, cleanup_view, evaluate_view, export_view, run_name_view, run_picker, session, share_view

st.title("Evaluate")
st.caption("How the best epoch of a finished run does on the validation pictures it never trained on.")

run = run_picker.choose_finished_run("evaluate_run")
if run is not None:
    try:
        evaluation = evaluate_view.evaluation_of(run)
    except EvaluationNotReady as error:
        st.info(str(error), icon=":material/info:")
        evaluate_view.show_curves(run)
    else:
        evaluate_view.show_summary(run, evaluation)
        evaluate_view.show_confusion(evaluation)
        evaluate_view.show_per_class(evaluation)
        evaluate_view.show_top_losses(run, evaluation)
        evaluate_view.show_unknown(run)
        evaluate_view.show_curves(run)
        audit_view.run_feature_map_section(run)
        st.page_link("pages/predict.py", label="Try the model on new pictures", icon=":material/image:",
                     query_params={run_picker.RUN_PARAM: run.id, session.SESSION_PARAM: session.session_token()})
    export_view.download_section(run, "evaluate_export")
    share_view.render(run)
cleanup_view.delete_run_control(run)
if run is not None:
    run_name_view.rename_control(run)
