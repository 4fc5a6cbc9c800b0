"""Which browser sessions may send files to the server, and how much upload data it holds at once.

Streamlit gives every connection a session, a locked password page and a demo page included, and
its upload route (``PUT /_stcore/upload_file/<session>/<file>``) keeps what it receives in the
server's memory until the session ends, without the page script ever running. So the studio
decides itself, before any byte is kept:

- A session may upload only once its page script has admitted it: an unlocked studio page
  (``admit(STUDIO)``, from ``ui.gate``) or a valid demo link (``admit(DEMO)``, from
  ``ui.demo_view``). A locked password page, an unknown demo token or a session that never ran
  the page cannot make the server keep a byte.
- Each admitted session holds at most ``SESSION_LIMIT_MB`` of its kind (uploads received plus
  uploads arriving), and the whole server at most ``TRANSFER_UPLOAD_MEMORY_MB`` (2,048 MB), whatever
  ``server.maxUploadSize`` says. Larger data sets come in from a folder through the command line.

``install()`` (called by ``ui.launch`` before Streamlit builds its server) puts the check in two
places: in front of the upload route, where the declared size is reserved before the body is read
(Streamlit's Starlette server), and in the uploaded-file store itself, which every Streamlit
version in the supported range calls before keeping a file.
"""

from __future__ import annotations

import logging
import os
import threading

STUDIO, DEMO = "studio", "demo"
SESSION_LIMIT_MB = {STUDIO: 1536, DEMO: 64}  # a studio session: one 1 GB zip and more
SERVER_LIMIT_ENV = "TRANSFER_UPLOAD_MEMORY_MB"
SERVER_LIMIT_MB = 2048
_MB = 2**20
_LOG = logging.getLogger(__name__)


class UploadRefused(Exception):
    """This session may not make the server keep these bytes (not admitted, or over a limit)."""


class UploadBudget:
    """Admitted sessions and the upload bytes each holds: received files plus requests in flight."""

    def __init__(self, server_limit: int, session_limits: dict[str, int]):
        self.server_limit, self.session_limits = server_limit, session_limits
        self._kinds: dict[str, str] = {}
        self._files: dict[str, dict[str, int]] = {}  # session -> file id -> bytes kept
        self._arriving: dict[str, int] = {}  # session -> bytes reserved by requests in flight
        self._lock = threading.Lock()

    def admit(self, session_id: str, kind: str) -> None:
        with self._lock:
            self._kinds[session_id] = kind

    def is_admitted(self, session_id: str) -> bool:
        with self._lock:
            return session_id in self._kinds

    def held(self, session_id: str | None = None) -> int:
        """Bytes held (kept and arriving) by one session, or by the whole server."""
        with self._lock:
            return self._held(session_id)

    def reserve(self, session_id: str, size: int) -> None:
        """Count ``size`` arriving bytes for this session, or raise UploadRefused."""
        with self._lock:
            self._check(session_id, size, self._held(session_id), self._held(None))
            self._arriving[session_id] = self._arriving.get(session_id, 0) + size

    def release(self, session_id: str, size: int) -> None:
        with self._lock:
            left = self._arriving.get(session_id, 0) - size
            if left > 0:
                self._arriving[session_id] = left
            else:
                self._arriving.pop(session_id, None)

    def keep(self, session_id: str, file_id: str, size: int) -> None:
        """Count a received file (replacing one of the same id), or raise UploadRefused. Bytes this
        request reserved on arrival are not counted twice: only kept files are compared here."""
        with self._lock:
            files = self._files.get(session_id, {})
            kept_by_session = sum(files.values()) - files.get(file_id, 0)
            kept_by_server = sum(sum(f.values()) for f in self._files.values()) - files.get(file_id, 0)
            self._check(session_id, size, kept_by_session, kept_by_server)
            self._files.setdefault(session_id, {})[file_id] = size

    def drop(self, session_id: str, file_id: str) -> None:
        with self._lock:
            self._files.get(session_id, {}).pop(file_id, None)

    def forget(self, session_id: str) -> None:
        """The session ended: its files are gone and it must be admitted again."""
        with self._lock:
            self._files.pop(session_id, None)
            self._kinds.pop(session_id, None)

    def _held(self, session_id: str | None) -> int:
        if session_id is None:
            return sum(sum(f.values()) for f in self._files.values()) + sum(self._arriving.values())
        return sum(self._files.get(session_id, {}).values()) + self._arriving.get(session_id, 0)

    def _check(self, session_id: str, size: int, session_held: int, server_held: int) -> None:
        kind = self._kinds.get(session_id)
        if kind is None:
            raise UploadRefused("this session has not been admitted to upload")
        if session_held + size > self.session_limits[kind]:
            raise UploadRefused(f"a {kind} session holds at most {self.session_limits[kind] // _MB} MB of uploads")
        if server_held + size > self.server_limit:
            raise UploadRefused(f"the server holds at most {self.server_limit // _MB} MB of uploads at once")


def server_limit_bytes(env: dict | None = None) -> int:
    value = (os.environ if env is None else env).get(SERVER_LIMIT_ENV, "")
    try:
        return max(1, int(value)) * _MB if value.strip() else SERVER_LIMIT_MB * _MB
    except ValueError:
        return SERVER_LIMIT_MB * _MB


BUDGET = UploadBudget(server_limit_bytes(), {kind: mb * _MB for kind, mb in SESSION_LIMIT_MB.items()})


def admit(kind: str) -> None:
    """Let the session running this page script upload, within the limits of ``kind``."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    context = get_script_run_ctx(suppress_warning=True)
    if context is not None:
        BUDGET.admit(context.session_id, kind)


# --------------------------------------------------------------------------- hooks into Streamlit


def install(budget: UploadBudget = BUDGET) -> None:
    """Put the budget in front of Streamlit's upload route and inside its uploaded-file store.
    Must run before Streamlit builds its server (``streamlit run`` does that after this)."""
    import streamlit.runtime.memory_uploaded_file_manager as store_module
    import streamlit.web.server.server as server_module

    guarded_store = _guarded_store_class(store_module.MemoryUploadedFileManager, budget)
    store_module.MemoryUploadedFileManager = guarded_store
    server_module.MemoryUploadedFileManager = guarded_store
    _guard_upload_route(budget)


def _guarded_store_class(base: type, budget: UploadBudget) -> type:
    class GuardedUploadedFileManager(base):
        """Streamlit's in-memory store of uploaded files, keeping only what the budget allows."""

        def add_file(self, session_id, file):
            budget.keep(session_id, file.file_id, len(file.data))  # raises UploadRefused: nothing is kept
            super().add_file(session_id, file)

        def remove_file(self, session_id, file_id):
            super().remove_file(session_id, file_id)
            budget.drop(session_id, file_id)

        def remove_session_files(self, session_id):
            super().remove_session_files(session_id)
            budget.forget(session_id)

    return GuardedUploadedFileManager


def _guard_upload_route(budget: UploadBudget) -> None:
    """Wrap the route factory of Streamlit's Starlette server so that each PUT reserves its declared
    size before its body is read. Older Streamlit servers (Tornado) read the body first; there the
    store's check still keeps nothing from a session that may not upload."""
    try:
        import streamlit.web.server.starlette.starlette_app as app_module
        import streamlit.web.server.starlette.starlette_routes as routes_module
    except ImportError:
        _LOG.warning("this Streamlit has no Starlette server: uploads are checked after they arrive")
        return
    original = routes_module.create_upload_routes
    if getattr(original, "_transfer_guarded", False):
        return

    def create_guarded_upload_routes(*args, **kwargs):
        routes = original(*args, **kwargs)
        for route in routes:
            if "PUT" in (getattr(route, "methods", None) or ()):
                route.app = _reserving_app(route.app, budget)
        return routes

    create_guarded_upload_routes._transfer_guarded = True
    routes_module.create_upload_routes = create_guarded_upload_routes
    app_module.create_upload_routes = create_guarded_upload_routes


def _reserving_app(app, budget: UploadBudget):
    async def reserving_app(scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "PUT":
            await app(scope, receive, send)
            return
        session_id = (scope.get("path_params") or {}).get("session_id", "")
        size = _declared_length(scope)
        if size is None:
            await _refuse(scope, receive, send, 411, "An upload must declare its length.")
            return
        try:
            budget.reserve(session_id, size)
        except UploadRefused as refused:
            status = 413 if budget.is_admitted(session_id) else 403
            await _refuse(scope, receive, send, status, f"Upload refused: {refused}.")
            return
        try:
            await app(scope, receive, send)
        finally:
            budget.release(session_id, size)

    return reserving_app


def _declared_length(scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-length":
            try:
                return max(0, int(value))
            except ValueError:
                return None
    return None


async def _refuse(scope, receive, send, status: int, sentence: str) -> None:
    from starlette.responses import PlainTextResponse

    # The body is never read; the connection is closed so the client stops sending it.
    response = PlainTextResponse(sentence, status_code=status, headers={"Connection": "close"})
    await response(scope, receive, send)
