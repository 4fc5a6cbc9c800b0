"""Streamlit helpers shared by the pages: the session's workspace, the sidebar, formatting.

Everything here is web-app glue; the engine lives in the ``transfer`` package.
"""
