"""Prepared data published to object storage (`data.output_dir=s3://bucket/prefix`), from where every node of a
cluster streams it with litdata.

The data is built in the local cache as always (content-addressed, immutable), then copied to the prefix. The
manifest goes up last and is the mark that the copy is complete; a marker object says that the prefix is lmpre's
while an upload is under way, so an interrupted upload is finished by the next run and a prefix holding anything
else is never written into. S3 and S3-compatible stores (boto3's credentials and `AWS_ENDPOINT_URL`) only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lmpre.errors import DataError

MANIFEST = "manifest.json"
UPLOADING = ".lmpre-uploading"  # present while lmpre uploads into the prefix, removed once the manifest is there


def is_remote(path: str | Path | None) -> bool:
    return path is not None and "://" in str(path)


@dataclass(frozen=True)
class S3Prefix:
    bucket: str
    prefix: str  # without a trailing slash; "" for the bucket's root

    @classmethod
    def parse(cls, url: str) -> S3Prefix:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise DataError(
                f"data.output_dir={url}: lmpre publishes prepared data to s3://BUCKET/PREFIX only (S3-compatible "
                "stores too, with AWS_ENDPOINT_URL); for other storage prepare into a local data.output_dir, copy it."
            )
        return cls(parsed.netloc, parsed.path.strip("/"))

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def check_prefix(url: str) -> None:
    """Fail before any work when `url` cannot receive prepared data: a scheme other than s3://, a bucket that is
    missing or not writable with these credentials, or a prefix holding what lmpre did not write."""
    target = S3Prefix.parse(url)
    with _storage_errors(target):
        client = _client()
        client.head_bucket(Bucket=target.bucket)
        _check_ours(client, target)


def publish(local: Path, url: str, key: str) -> bool:
    """Make `url` hold a complete copy of the prepared directory `local` (whose manifest has `key`); returns True
    when it was uploaded here, False when a complete copy of the same preparation was already there."""
    target = S3Prefix.parse(url)
    with _storage_errors(target):
        client = _client()
        remote = _check_ours(client, target)
        if remote is not None:
            if remote.get("key") != key:
                raise DataError(
                    f"data.output_dir={target} holds data prepared from other settings or source files: prepared "
                    "data is never replaced in place (a training may be streaming it): choose another prefix."
                )
            return False
        client.put_object(Bucket=target.bucket, Key=target.key(UPLOADING), Body=b"")
        for path in sorted(local.rglob("*")):
            if path.is_file() and path.name != MANIFEST:
                client.upload_file(str(path), target.bucket, target.key(path.relative_to(local).as_posix()))
        client.upload_file(str(local / MANIFEST), target.bucket, target.key(MANIFEST))
        client.delete_object(Bucket=target.bucket, Key=target.key(UPLOADING))
    return True


def _check_ours(client: Any, target: S3Prefix) -> dict[str, Any] | None:
    """The manifest of lmpre's complete copy at `target`, or None when the prefix is empty or holds an upload of
    lmpre's that did not finish; anything else there is refused."""
    manifest = _remote_manifest(client, target)
    if manifest is None:
        existing = _list(client, target)
        if existing and target.key(UPLOADING) not in existing:
            raise DataError(
                f"data.output_dir={target} is not empty and holds no lmpre manifest: lmpre writes only into an empty "
                "prefix, or one it prepared. Choose another data.output_dir."
            )
    return manifest


def _client() -> Any:
    import boto3  # only runs that publish need it, and its import is slow

    return boto3.client("s3")


def _remote_manifest(client: Any, target: S3Prefix) -> dict[str, Any] | None:
    try:
        body = client.get_object(Bucket=target.bucket, Key=target.key(MANIFEST))["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    try:
        manifest = json.loads(body)
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != "lmpre.prepared":
        raise DataError(f"data.output_dir={target} holds a manifest.json lmpre did not write: choose another prefix.")
    return manifest


def _list(client: Any, target: S3Prefix) -> set[str]:
    prefix = target.key("")
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


@contextmanager
def _storage_errors(target: S3Prefix) -> Iterator[None]:
    """Storage failures as one actionable line (credentials, endpoint, bucket), not a botocore traceback."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        raise DataError(
            f"data.output_dir={target}: the storage refused ({code}: {error}); check that bucket {target.bucket!r} "
            "exists and that your credentials may write to it."
        ) from None
    except BotoCoreError as error:
        raise DataError(
            f"data.output_dir={target}: {error}. Set AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or "
            "AWS_PROFILE) and, for an S3-compatible store, AWS_ENDPOINT_URL (and AWS_CA_BUNDLE for its TLS CA)."
        ) from None
