"""``web_fetch``: an HTTP GET to an allow-listed domain, with size, time and redirect limits.

The allow-list holds host names (``example.com`` also admits ``docs.example.com``), IP literals, or either with a
port (``127.0.0.1:8080`` admits that port only). Every redirect hop is checked against it again. A name that
resolves to a loopback, private, link-local or otherwise internal address is refused unless the allow-list names
that address literally, so an allowed domain cannot be pointed at the worker's own network (cloud metadata,
PostgreSQL, Redis). Not prevented: a DNS answer that changes between our check and the connection (rebinding).

The body is read up to ``max_bytes`` (a note says when it was cut) within ``timeout_s`` in all. HTML is turned
into its text; JSON and other text is returned as is; binary content is described, not shown.

Side effect: ``external`` (it reaches outside the worker); idempotent (a GET).
"""

from __future__ import annotations

import html.parser
import ipaddress
import socket
import time
from collections.abc import Sequence
from urllib.parse import urljoin, urlsplit

import httpx
from pydantic import BaseModel, Field

from autogpt_workers.commands.base import Command, CommandContext, CommandResult
from autogpt_workers.errors import CommandError

MAX_REDIRECTS = 5
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript", "application/x-yaml")


class WebFetchArgs(BaseModel):
    url: str = Field(min_length=1, max_length=2048, description="An http(s) URL on an allowed domain.")


class WebFetch(Command[WebFetchArgs]):
    """Fetch a URL from an allow-listed domain."""

    name = "web_fetch"
    description = "Fetch a web page or file over HTTP GET and return its text. Only some domains are allowed."
    Args = WebFetchArgs
    side_effect = "external"
    idempotent = True

    def __init__(
        self,
        allowed_domains: Sequence[str],
        *,
        max_bytes: int = 1_000_000,
        timeout_s: float = 10.0,
        user_agent: str = "autogpt-workers/0.1 (+web_fetch)",
    ) -> None:
        self.allowed = [_parse_entry(entry) for entry in allowed_domains if entry.strip()]
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        shown = ", ".join(entry.strip().lower() for entry in allowed_domains) or "none"
        self.description = f"{WebFetch.description} Allowed domains: {shown}."  # type: ignore[misc]

    def run(self, args: WebFetchArgs, ctx: CommandContext) -> CommandResult:
        if not self.allowed:
            raise CommandError("web_fetch is disabled on this worker: no domain is allowed")
        deadline = time.monotonic() + self.timeout_s
        url = args.url.strip()
        with httpx.Client(timeout=self.timeout_s, follow_redirects=False, trust_env=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                self.check(url)
                try:
                    with client.stream("GET", url, headers={"User-Agent": self.user_agent}) as response:
                        if response.is_redirect and "location" in response.headers:
                            url = urljoin(url, response.headers["location"])
                            continue
                        body, complete = self._read(response, deadline)
                        return self._result(url, response, body, complete)
                except httpx.TimeoutException as exc:
                    raise CommandError(f"fetching {url} timed out after {self.timeout_s:g} s") from exc
                except httpx.HTTPError as exc:
                    raise CommandError(f"fetching {url} failed: {exc}") from exc
        raise CommandError(f"too many redirects (more than {MAX_REDIRECTS}) starting at {args.url}")

    def check(self, url: str) -> None:
        """Raise ``CommandError`` unless ``url`` is http(s) on an allowed host whose addresses are acceptable."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CommandError(f"{url!r} is not an http(s) URL")
        if parts.username or parts.password:
            raise CommandError("URLs with credentials are not allowed")
        host = parts.hostname.lower().rstrip(".")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        entry = next((e for e in self.allowed if _matches(e, host, port)), None)
        if entry is None:
            allowed = ", ".join(f"{h}:{p}" if p else h for h, p in self.allowed)
            raise CommandError(f"the domain {host!r} is not on this task's allow-list ({allowed})")
        if _is_ip(entry[0]):
            return  # an address named literally is allowed as such
        for address in _resolve(host, port):
            if not address.is_global:
                raise CommandError(
                    f"{host!r} resolves to the internal address {address}; fetching it is not allowed"
                )

    def _read(self, response: httpx.Response, deadline: float) -> tuple[bytes, bool]:
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > self.max_bytes:
                return bytes(body[: self.max_bytes]), False
            if time.monotonic() > deadline:
                raise httpx.ReadTimeout("overall time limit")
        return bytes(body), True

    def _result(self, url: str, response: httpx.Response, body: bytes, complete: bool) -> CommandResult:
        status = f"HTTP {response.status_code} {response.reason_phrase}".strip()
        content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type.startswith(TEXT_TYPES) or not content_type:
            text = body.decode(response.encoding or "utf-8", errors="replace")
            if content_type == "text/html":
                text = html_to_text(text)
        else:
            text = f"({content_type} content of {len(body)} bytes; not shown)"
        if not complete:
            text += f"\n[body cut at {self.max_bytes} bytes]"
        if response.status_code >= 400:
            raise CommandError(f"{status} for {url}\n{text[:1000]}")
        return CommandResult(output=f"{status} ({content_type or 'unknown type'}) {url}\n\n{text}")


def _parse_entry(entry: str) -> tuple[str, int | None]:
    entry = entry.strip().lower().rstrip(".")
    if entry.startswith("["):  # [::1]:8080
        host, _, rest = entry[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else None
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, int(port)
    return entry, None


def _matches(entry: tuple[str, int | None], host: str, port: int) -> bool:
    allowed_host, allowed_port = entry
    if allowed_port is not None and allowed_port != port:
        return False
    if _is_ip(allowed_host):
        return host == allowed_host
    return host == allowed_host or host.endswith("." + allowed_host)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    if _is_ip(host):
        return [ipaddress.ip_address(host)]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise CommandError(f"cannot resolve {host!r}: {exc.strerror}") from exc
    return [ipaddress.ip_address(info[4][0]) for info in infos]


class _TextExtractor(html.parser.HTMLParser):
    SKIP = frozenset({"script", "style", "noscript", "template"})
    BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
                       "pre", "table", "ul", "ol", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP and self.skipping:
            self.skipping -= 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def html_to_text(markup: str) -> str:
    """The visible text of an HTML page, one block per line."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)
