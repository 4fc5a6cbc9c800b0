"""The Train page's view of feature transfer's head fit (ui/head_fit_view.py), through AppTest."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from ui import head_fit_view

FIT_EVENT = {"type": "info", "message": "Head fit to its optimum ...",
             "head_fit": {"normalisation": "unit length", "class_weights": [0.6, 3.0], "C": 0.3,
                          "iterations": 17, "seconds": 0.04, "curve": [0.9, 0.5, 0.31, 0.3],
                          "strength_cv": {"folds": 2, "scores": {"0.1": 0.75, "0.3": 0.8}}},
             "cv_accuracy": 0.8125, "cv_correct": 13, "cv_total": 16, "cv_folds": 2}


def show(events):
    from ui import head_fit_view

    drawn = head_fit_view.render(events, key="fit")
    import streamlit as st

    st.write(f"drawn={drawn}")


def test_the_view_shows_what_the_fit_chose_and_its_curve():
    app = AppTest.from_function(show, args=([{"type": "epoch", "epoch": 1}, FIT_EVENT],), default_timeout=30).run()
    assert not app.exception
    text = " ".join(m.value for m in app.markdown)
    assert "C = 0.3, chosen by 2-fold cross-validation" in text and "C 0.3: 80.0%" in text
    assert "0.60, 3.00" in text  # uneven classes: their weights are shown
    assert "17 L-BFGS iterations" in text
    assert "Features scaled to unit length before the fit." in text
    assert len(app.get("plotly_chart")) == 1
    assert "drawn=True" in text


def test_a_run_that_trained_for_epochs_shows_nothing_here():
    app = AppTest.from_function(show, args=([{"type": "epoch", "epoch": 1}, {"type": "info", "message": "x"}],),
                                default_timeout=30).run()
    assert not app.exception and not app.markdown[:-1] and not app.get("plotly_chart")
    assert "drawn=False" in " ".join(m.value for m in app.markdown)


def test_one_picture_per_class_names_the_default_and_even_classes():
    fit = {**FIT_EVENT["head_fit"], "class_weights": [1.0, 1.0], "strength_cv": None}
    lines = head_fit_view.describe_choices(fit)
    assert any("measured default" in line for line in lines)
    assert any("every picture weighs the same" in line for line in lines)
    assert not any("ImageNet" in line for line in lines)  # a fit without the backbone's classes says nothing of them


def test_a_fit_guided_by_the_backbones_classes_says_so():
    lines = head_fit_view.describe_choices({**FIT_EVENT["head_fit"], "source_classes": 1000})
    assert any("backbone's own 1,000 ImageNet classes" in line for line in lines)
