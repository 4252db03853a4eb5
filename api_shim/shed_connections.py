"""The API process's side of ``connection_share``: an answer that closes its connection when this process holds more
than its fair share of the clients' connections."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autogpt_workers.connection_share import ConnectionShare


class ShedConnections:
    """Adds ``Connection: close`` to a response when ``share.shed()`` says so (uvicorn then closes the connection
    once the response is sent, and the client opens another, which the kernel places anew)."""

    def __init__(self, app: ASGIApp, share: ConnectionShare) -> None:
        self.app = app
        self.share = share

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.share.shed():
            await self.app(scope, receive, send)
            return

        async def closing(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        await self.app(scope, receive, closing)
