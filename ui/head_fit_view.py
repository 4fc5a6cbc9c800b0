"""What feature transfer's head fit chose, read from a run's events (no torch here).

A features run with a plain linear head does not train for epochs: it fits the head to its
optimum once (``transfer.training.head_fit``) and writes one ``info`` event with a
``head_fit`` entry (normalisation, class weights, C and how it was chosen, the L-BFGS
iterations, the objective after each evaluation) and, for small data sets, the accuracy
cross-validated over every labelled picture (``cv_accuracy``, ``cv_correct``, ``cv_total``,
``cv_folds``). This view shows that instead of an epoch chart with a single point.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st


def fit_event(events: list[dict]) -> dict | None:
    """The run's latest head-fit event, or None when its head trained for epochs."""
    for event in reversed(events):
        if event.get("type") == "info" and isinstance(event.get("head_fit"), dict):
            return event
    return None


def describe_choices(fit: dict) -> list[str]:
    """One sentence per choice the fit made, in the Train page's words."""
    weights = fit.get("class_weights") or []
    even = bool(weights) and max(weights) - min(weights) < 1e-3
    lines = [f"Features scaled to {fit.get('normalisation', 'unit length')} before the fit.",
             *([f"Guided by the backbone's own {fit['source_classes']:,} ImageNet classes: each class starts half "
                "from its pictures' mean, half from what the backbone calls them (this matters most with few "
                "pictures)."] if fit.get("source_classes") else []),
             "Classes are even: every picture weighs the same." if even else
             "Classes weighted so that each counts the same: " + ", ".join(f"{w:.2f}" for w in weights) + "."]
    search = fit.get("strength_cv")
    if search:
        scores = ", ".join(f"C {c}: {float(s):.1%}" for c, s in search.get("scores", {}).items())
        lines.append(f"Regularisation C = {fit.get('C'):g}, chosen by {search.get('folds')}-fold cross-validation "
                     f"on the training pictures ({scores}).")
    else:
        lines.append(f"Regularisation C = {fit.get('C'):g}, the measured default when a class has a single picture.")
    lines.append(f"Converged in {fit.get('iterations')} L-BFGS iterations, {fit.get('seconds', 0):.2f} s.")
    return lines


def curve_figure(curve: list[float]) -> go.Figure:
    figure = go.Figure(go.Scatter(x=list(range(1, len(curve) + 1)), y=curve, mode="lines", name="objective"))
    figure.update_layout(height=260, margin=dict(l=10, r=10, t=30, b=10), title="The fit's objective",
                         xaxis_title="evaluation of the loss", yaxis_title="loss + regularisation")
    return figure


def render(events: list[dict], key: str) -> bool:
    """Draw the head fit of a run with these events; False (nothing drawn) when there was none."""
    event = fit_event(events)
    if event is None:
        return False
    fit = event["head_fit"]
    st.markdown("**The head was fit to its optimum** (feature transfer: no epochs needed).")
    st.markdown("\n".join(f"- {line}" for line in describe_choices(fit)))
    if fit.get("curve"):  # the cross-validated accuracy is shown with the run's other figures, above
        st.plotly_chart(curve_figure(fit["curve"]), key=key)
    return True
