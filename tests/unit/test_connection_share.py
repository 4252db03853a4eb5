"""``connection_share``: a process holding more than its fair share of the connections sheds one (an answer with
``Connection: close``), at most once per interval; one at or under its share never does."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from api_shim.shed_connections import ShedConnections
from autogpt_workers.connection_share import ConnectionShare


def _share(counts: list[int], index: int, held: int) -> ConnectionShare:
    return ConnectionShare(counts, index, lambda: held, interval_s=0.05)


def test_a_process_over_its_share_sheds_one_connection_per_interval() -> None:
    counts = [0, 12]
    share = _share(counts, 0, held=20)
    assert share.shed(now=100.0)  # 20 of 32: over ceil(32 / 2) = 16
    assert counts == [20, 12]  # its own count published on the way
    assert not share.shed(now=100.01)  # within the interval
    assert share.shed(now=100.06)


def test_a_process_at_or_under_its_share_keeps_its_connections() -> None:
    assert not _share([0, 16], 0, held=16).shed(now=1.0)
    assert not _share([0, 20], 0, held=12).shed(now=1.0)
    assert not _share([0, 16], 0, held=17).shed(now=1.0)  # 17 of 33: ceil(33 / 2) = 17, its share exactly
    assert _share([0, 15], 0, held=17).shed(now=1.0)  # 17 of 32


def test_the_middleware_closes_the_connection_only_when_told() -> None:
    async def hello(_: object) -> PlainTextResponse:
        return PlainTextResponse("hi")

    for held, closes in ((20, True), (10, False)):
        app = ShedConnections(Starlette(routes=[Route("/", hello)]), _share([0, 12], 0, held=held))
        with TestClient(app) as client:
            response = client.get("/")
        assert response.status_code == 200 and response.text == "hi"
        assert (response.headers.get("connection") == "close") is closes
