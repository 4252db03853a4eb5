"""Where a task's workspace files live between steps: ``base`` (the interface), ``local`` (default), ``s3``.

``artifact_store(settings)`` builds the configured one; the act worker and the API's downloads use the same::

    store = artifact_store(settings)
    with store.open(task_id, "report.md") as f:   # ArtifactNotFound -> 404
        data = f.read()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from autogpt_workers.artifacts.base import (
    ArtifactNotFound,
    ArtifactStore,
    ArtifactStoreError,
    InvalidArtifactPath,
    changed_paths,
    check_relative,
    snapshot,
)
from autogpt_workers.artifacts.local import LocalArtifactStore

if TYPE_CHECKING:
    from autogpt_workers.config import Settings

__all__ = [
    "ArtifactNotFound",
    "ArtifactStore",
    "ArtifactStoreError",
    "InvalidArtifactPath",
    "LocalArtifactStore",
    "artifact_store",
    "changed_paths",
    "check_relative",
    "snapshot",
]


def artifact_store(settings: Settings) -> ArtifactStore:
    """The store ``settings.artifact_store`` names (boto3 is imported only for ``s3``)."""
    if settings.artifact_store == "s3":
        from autogpt_workers.artifacts.s3 import S3ArtifactStore

        secret = settings.artifact_s3_secret_access_key
        return S3ArtifactStore(
            settings.artifact_s3_bucket or "",
            prefix=settings.artifact_s3_prefix,
            endpoint_url=settings.artifact_s3_endpoint_url,
            region=settings.artifact_s3_region,
            access_key_id=settings.artifact_s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
        )
    return LocalArtifactStore(settings.workspace_root)
