"""A real browser opens the studio and gets a private session link."""

import pytest

from browsertools import wait_for_app

pytestmark = pytest.mark.browser


def test_home_opens_with_a_private_session_link(studio, page):
    page.goto(studio)
    wait_for_app(page)
    page.get_by_role("heading", name="Transfer Studio").wait_for()
    assert "?s=" in page.url  # the session token that lets a refresh find this session's runs
    token = page.url.split("?s=")[1]
    page.reload()
    wait_for_app(page)
    assert page.url.split("?s=")[1] == token
