"""Plotly figures of training progress, shared by the Train, Compare and Evaluate views."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

_TRAIN, _VAL = "#2f6fdf", "#e4572e"


def training_curves(history: list[dict], steps: list[dict] | None = None) -> go.Figure:
    """Loss and accuracy per epoch, training against validation, side by side."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    epochs = [e["epoch"] for e in history]
    for column, metric in ((1, "loss"), (2, "accuracy")):
        figure.add_trace(go.Scatter(x=epochs, y=[e.get(f"train_{metric}") for e in history], name=f"training {metric}",
                                    mode="lines+markers", line={"color": _TRAIN}), row=1, col=column)
        figure.add_trace(go.Scatter(x=epochs, y=[e.get(f"val_{metric}") for e in history], name=f"validation {metric}",
                                    mode="lines+markers", line={"color": _VAL}), row=1, col=column)
    if steps:  # the current epoch, step by step, before its first epoch point exists
        xs = [s["epoch"] - 1 + s["step"] / max(1, s["steps"]) for s in steps if s.get("steps")]
        figure.add_trace(go.Scatter(x=xs, y=[s.get("loss") for s in steps if s.get("steps")], name="training loss (steps)",
                                    mode="lines", line={"color": _TRAIN, "dash": "dot", "width": 1}), row=1, col=1)
    figure.update_xaxes(title_text="epoch")
    figure.update_yaxes(range=[0, 1.02], row=1, col=2)
    figure.update_layout(height=340, margin={"l": 10, "r": 10, "t": 30, "b": 10}, legend={"orientation": "h", "y": -0.25})
    return figure


def compare_curves(series: dict[str, list[dict]], x: str = "epoch") -> go.Figure:
    """Validation accuracy of several runs on one chart; ``x`` is "epoch" or "elapsed" (seconds)."""
    figure = go.Figure()
    for name, history in series.items():
        figure.add_trace(go.Scatter(x=[e.get(x) for e in history], y=[e.get("val_accuracy") for e in history],
                                    name=name, mode="lines+markers"))
    figure.update_layout(height=360, xaxis_title="epoch" if x == "epoch" else "seconds of training",
                         yaxis_title="validation accuracy", yaxis_range=[0, 1.02],
                         margin={"l": 10, "r": 10, "t": 10, "b": 10}, legend={"orientation": "h", "y": -0.2})
    return figure


def lr_finder_curve(lrs: list[float], losses: list[float], suggestion: float) -> go.Figure:
    """Loss against learning rate (log scale) with the suggested rate marked."""
    figure = go.Figure(go.Scatter(x=lrs, y=losses, mode="lines", name="loss", line={"color": _TRAIN}))
    figure.add_vline(x=suggestion, line_dash="dash", line_color=_VAL,
                     annotation_text=f"suggested {suggestion:.1e}")
    figure.update_layout(height=260, xaxis_type="log", xaxis_title="learning rate", yaxis_title="loss",
                         margin={"l": 10, "r": 10, "t": 10, "b": 10}, showlegend=False)
    return figure
