"""The page behind an API key, in a real browser and by hand-made requests: no page, stream or form works
without the key's session; the session cookie is http-only; a form post without the session's CSRF token,
or from another site, is refused; and the page asks nothing of any address but the server's."""

from __future__ import annotations

import urllib.error
import urllib.request

import openai
import pytest

pytestmark = [pytest.mark.server, pytest.mark.browser, pytest.mark.timeout(300)]
KEY = "page-test-key"
PAGES = ["/jobs", "/jobs/new", "/models", "/playground", "/review", "/jobs/ftjob-0", "/models/x/1", "/review/rq-00"]
STREAMS = ["/jobs/ftjob-0/stream", "/jobs/ftjob-0/metrics.json", "/review/rq-00/item"]


def request(url: str, method: str = "GET", headers: dict | None = None, data: bytes | None = None):
    """(status, headers, body) without following redirects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(urllib.request.Request(url, data=data, method=method, headers=headers or {}), timeout=30) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    from conftest import RunningServer

    home = tmp_path_factory.mktemp("home")
    server = RunningServer(home, home / "server.log", api_key=KEY, extra_args=("--no-worker",)).start()
    yield server
    server.stop()


def test_no_page_or_stream_without_the_key(keyed_server):
    for path in PAGES:
        status, headers, _ = request(keyed_server.url + path, headers={"Accept": "text/html"})
        assert status == 303 and headers["location"].startswith("/login?next="), (path, status)
    for path in STREAMS:
        status, _, body = request(keyed_server.url + path, headers={"Accept": "text/event-stream"})
        assert status == 401, (path, status, body)
    forged = {"Cookie": "tunesmith_session=0123.abcd", "Accept": "text/html"}
    assert request(keyed_server.url + "/jobs", headers=forged)[0] == 303
    status, _, _ = request(
        keyed_server.url + "/playground/stream",
        "POST",
        {"Content-Type": "application/json"},
        b'{"column": "base:smollm2-135m", "prompt": "hi"}',
    )
    assert status == 401
    # /v1 keeps its bearer rule, and a page session is not a key
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed_server.base_url, api_key="wrong", max_retries=0).models.list()


def test_login_once_then_a_session_that_refuses_cross_site_forms(keyed_server, open_page):
    tab = open_page(keyed_server)
    page = tab.page
    page.goto("/models")
    assert page.url.endswith("/login?next=%2Fmodels")
    page.fill("input[name=key]", "not-the-key")
    page.click("button[type=submit]")
    assert "not this server's API key" in page.inner_text("[role=alert]")
    page.fill("input[name=key]", KEY)
    page.click("button[type=submit]")
    page.wait_for_url("**/models")
    assert page.inner_text("h1") == "Models"
    assert page.evaluate("document.cookie") == ""  # http-only: no script can read the session
    cookie = next(c for c in tab.context.cookies() if c["name"] == "tunesmith_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    page.reload()
    assert page.inner_text("h1") == "Models"  # the session outlives a reload
    response = page.goto("/jobs")
    assert response.headers["content-security-policy"].startswith("default-src 'self'")

    session = {"Cookie": f"tunesmith_session={cookie['value']}"}
    form = b"model=smollm2-135m&prompt=hello"
    plain = {**session, "Content-Type": "application/x-www-form-urlencoded"}
    # the session alone is not enough to change anything: the form's token is missing
    status, _, body = request(keyed_server.url + "/review/add", "POST", {**plain, "Origin": keyed_server.url}, form)
    assert status == 403 and "expired" in body
    token = page.get_attribute("body", "data-csrf")
    with_token = form + f"&csrf_token={token}".encode()
    # from another site, even with the token (which that site could not have read anyway)
    evil = {**plain, "Origin": "http://evil.example"}
    status, _, body = request(keyed_server.url + "/review/add", "POST", evil, with_token)
    assert status == 403 and "another site" in body
    # the page's own post goes through (a queue for the base model, here)
    own = {**plain, "Origin": keyed_server.url}
    status, headers, _ = request(keyed_server.url + "/review/add", "POST", own, with_token)
    assert status == 303 and headers["location"].startswith("/review/rq-")
    # logging out ends the session, for a copy of its cookie too
    page.click("text=Log out")
    page.wait_for_url("**/login")
    assert request(keyed_server.url + "/jobs", headers={**session, "Accept": "text/html"})[0] == 303
