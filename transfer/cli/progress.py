"""Progress bars of the ``transfer`` command, drawn by tqdm on stderr.

One bar at a time: the phase of work under way (decoding pictures, computing features, an
epoch's steps, cross-validating ...), replaced when the phase changes. Lines printed while a bar
is shown (an epoch's summary, a warning) go above it, so bars and lines never mix. Where stderr
is not a terminal (a pipe, a log file, ``--json`` callers) no bar is drawn, only the lines.
"""

from __future__ import annotations

from tqdm import tqdm


class ProgressBars:
    def __init__(self, stream, live: bool | None = None):
        self.stream = stream
        self.live = stream.isatty() if live is None else live
        self._bar: tqdm | None = None
        self._title: str | None = None

    def show(self, title: str, done: int, total: int, **details) -> None:
        """Show ``done`` of ``total`` for the phase ``title``, with ``details`` after the count."""
        if not self.live:
            return
        total = max(0, int(total or 0))
        if self._bar is None or self._title != title or self._bar.total != total:
            self.close()
            self._bar = tqdm(total=total or None, desc=title, file=self.stream, leave=False, dynamic_ncols=True,
                             bar_format="{desc} {bar} {n_fmt}/{total_fmt} {postfix}" if total else None,
                             mininterval=0.1)
            self._title = title
        self._bar.n = min(int(done or 0), total) if total else int(done or 0)
        self._bar.set_postfix_str("  ".join(f"{key} {value}" for key, value in details.items()), refresh=False)
        self._bar.refresh()

    def line(self, text: str) -> None:
        """Print ``text`` on a line of its own, above the bar."""
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
            self._title = None
