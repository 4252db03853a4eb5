"""The submit figure's split by API process: which process holds each client connection (read from /proc), and
the latencies grouped by it."""

from __future__ import annotations

import os
import socket
from collections import Counter

from bench import httpload
from bench.submit_api import split_by_process


def test_server_connections_names_the_process_holding_each_servers_end() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        accepted = [server.accept()[0] for _ in clients]
        try:
            found = httpload.server_connections(port, [os.getpid()])
            assert found == {c.getsockname()[1]: os.getpid() for c in clients}
            assert httpload.server_connections(port, []) == {}  # no process of ours holds them
        finally:
            for s in clients + accepted:
                s.close()


def test_split_by_process_groups_the_clients_latencies_busiest_first() -> None:
    result = httpload.LoadResult(1.0, [], Counter(), [], [])
    result.clients = [(1001, [0.010, 0.020]), (1002, [0.030]), (1003, [0.001]), (None, [9.0]), (1004, [5.0])]
    served_by = {1001: 7, 1002: 7, 1003: 8}  # 1004 was not seen (it connected after the reading)
    rows = split_by_process(result, served_by)
    assert [n for n, _, _ in rows] == [2, 1]
    assert rows[0][1] == 0.020 and rows[1][1] == rows[1][2] == 0.001
