"""The home page explains the product and the navigation starts."""

from apptools import open_app


def test_home_page_renders_and_explains_the_methods():
    app = open_app()
    assert not app.exception
    assert app.title[0].value == "Transfer Studio"
    text = " ".join(m.value for m in app.markdown)
    assert "Data" in text and "Predict" in text
    table = app.table[0].value
    assert list(table["Method"]) == ["Feature transfer", "Fine-tuning", "Training from scratch"]
    assert "session_token" in app.session_state and app.query_params.get("s")
