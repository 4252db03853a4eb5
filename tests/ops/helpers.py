"""Reading Prometheus text exposition in tests."""

from __future__ import annotations

import re

import httpx
from prometheus_client.parser import text_string_to_metric_families

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


def scrape(url: str, auth: tuple[str, str] | None = None) -> str:
    resp = httpx.get(url, timeout=10, auth=auth)
    assert resp.status_code == 200, f"{url}: {resp.status_code} {resp.text[:200]}"
    return resp.text


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of one exposition."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def families(text: str) -> set[str]:
    """Metric family names declared in one exposition (``# TYPE`` lines), counters without ``_total``."""
    return {f.name for f in text_string_to_metric_families(text)}


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == name and want <= set(ls))


def label_values(text: str) -> list[str]:
    return [v for (_, ls) in samples(text) for _, v in ls]
