"""Run Debian's ``prometheus`` against processes on this machine, with the repository's scrape config and alert
rules (``deploy/prometheus``) and each job's targets rewritten to local ``host:port`` addresses.

Used by ``autogpt-workers run`` (when the ``prometheus`` binary is installed) and by the operators' tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"


def local_config(
    targets: dict[str, str],
    out_dir: Path,
    flower_auth: tuple[str, str] | None = None,
    scrape_interval: str = "5s",
) -> Path:
    """Write ``out_dir/prometheus.yml``: the jobs named in ``targets`` (job name -> ``host:port``), the others
    dropped; Flower's basic auth password in a file beside it. Returns the file's path."""
    config: dict[str, Any] = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(
        scrape_interval=scrape_interval, scrape_timeout=scrape_interval, evaluation_interval=scrape_interval
    )
    config["rule_files"] = [str(PROMETHEUS_DIR / "alerts.yml")]
    out_dir.mkdir(parents=True, exist_ok=True)  # before the password file goes in it
    jobs = []
    for job in config["scrape_configs"]:
        target = targets.get(job["job_name"])
        if target is None:
            continue
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [target]}]
        if "basic_auth" in job:
            if flower_auth is None:
                continue
            secret = out_dir / "flower-password"
            secret.write_text(flower_auth[1])
            secret.chmod(0o600)
            job["basic_auth"] = {"username": flower_auth[0], "password_file": str(secret)}
        jobs.append(job)
    config["scrape_configs"] = jobs
    path = out_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
