"""Models out: prediction, unknown answers, exports, model cards, demo links."""
