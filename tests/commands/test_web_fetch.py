"""``web_fetch`` against a real local HTTP server: the allow-list, redirects, size and time limits, content."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest

from autogpt_workers.commands import CommandContext
from autogpt_workers.commands.web import WebFetch, WebFetchArgs, html_to_text
from autogpt_workers.errors import CommandError


@pytest.fixture
def fetch(http_server: str) -> WebFetch:
    port = urlsplit(http_server).port
    return WebFetch([f"127.0.0.1:{port}"], max_bytes=10_000, timeout_s=1.5)


def get(fetch: WebFetch, ctx: CommandContext, url: str) -> str:
    return fetch.run(WebFetchArgs(url=url), ctx).output


def test_html_comes_back_as_its_text(fetch: WebFetch, ctx: CommandContext, http_server: str) -> None:
    output = get(fetch, ctx, f"{http_server}/page.html")
    assert output.startswith(f"HTTP 200 OK (text/html) {http_server}/page.html\n\n")
    assert output.endswith("Hi\nHeading\nFirst & only paragraph.")
    assert "var x" not in output and "p{}" not in output


def test_json_comes_back_as_is(fetch: WebFetch, ctx: CommandContext, http_server: str) -> None:
    output = get(fetch, ctx, f"{http_server}/data.json")
    assert json.loads(output.split("\n\n", 1)[1]) == {"answer": 42}


def test_a_redirect_inside_the_allow_list_is_followed(fetch: WebFetch, ctx: CommandContext, http_server: str) -> None:
    assert '{"answer": 42}' in get(fetch, ctx, f"{http_server}/redirect-in")


def test_a_redirect_out_of_the_allow_list_is_refused(fetch: WebFetch, ctx: CommandContext, http_server: str) -> None:
    with pytest.raises(CommandError, match=r"the domain '127.0.0.2' is not on this task's allow-list"):
        get(fetch, ctx, f"{http_server}/redirect-out")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/", r"the domain 'example.com' is not on this task's allow-list \(127.0.0.1:\d+\)"),
        ("http://127.0.0.1:1/", "the domain '127.0.0.1' is not on this task's allow-list"),  # another port
        ("file:///etc/passwd", "is not an http\\(s\\) URL"),
        ("ftp://127.0.0.1/", "is not an http\\(s\\) URL"),
        ("http://user:pw@127.0.0.1/", "URLs with credentials are not allowed"),
    ],
)
def test_urls_off_the_allow_list_are_refused(fetch: WebFetch, ctx: CommandContext, url: str, message: str) -> None:
    with pytest.raises(CommandError, match=message):
        get(fetch, ctx, url)


def test_an_allowed_name_that_resolves_inside_is_refused(ctx: CommandContext, http_server: str) -> None:
    port = urlsplit(http_server).port
    fetch = WebFetch(["localhost"])
    with pytest.raises(CommandError, match="'localhost' resolves to the internal address"):
        get(fetch, ctx, f"http://localhost:{port}/data.json")


def test_subdomains_of_an_allowed_domain_match(ctx: CommandContext) -> None:
    fetch = WebFetch(["example.com"])
    with pytest.raises(CommandError, match="not on this task's allow-list"):
        fetch.check("http://notexample.com/")
    with pytest.raises(CommandError, match="not on this task's allow-list"):
        fetch.check("http://example.com.evil.net/")


def test_the_body_is_cut_at_the_size_limit(fetch: WebFetch, ctx: CommandContext, http_server: str) -> None:
    output = get(fetch, ctx, f"{http_server}/big")
    assert output.count("z") == 10_000 and output.endswith("[body cut at 10000 bytes]")


def test_a_slow_server_times_out(fetch: WebFetch, ctx: CommandContext, http_server: str) -> None:
    with pytest.raises(CommandError, match=r"fetching .*/slow timed out after 1.5 s"):
        get(fetch, ctx, f"{http_server}/slow")


def test_binary_content_is_described(fetch: WebFetch, ctx: CommandContext, http_server: str) -> None:
    assert "(image/png content of 108 bytes; not shown)" in get(fetch, ctx, f"{http_server}/image")


def test_an_error_status_is_a_command_error(fetch: WebFetch, ctx: CommandContext, http_server: str) -> None:
    with pytest.raises(CommandError, match=r"HTTP 404 Not Found for .*/missing\nnot here"):
        get(fetch, ctx, f"{http_server}/missing")


def test_no_allowed_domain_means_disabled(ctx: CommandContext, http_server: str) -> None:
    with pytest.raises(CommandError, match="web_fetch is disabled on this worker: no domain is allowed"):
        get(WebFetch([]), ctx, f"{http_server}/data.json")


def test_html_to_text_drops_markup() -> None:
    assert html_to_text("<ul><li>a</li><li>b &lt;c&gt;</li></ul><script>x()</script>") == "a\nb <c>"
