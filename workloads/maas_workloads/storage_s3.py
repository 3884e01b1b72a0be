"""S3 (and S3-compatible) storage locations: storage.Location on a bucket and key prefix.

S3 uses boto3's standard configuration: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_SESSION_TOKEN`, `AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` /
`AWS_ENDPOINT_URL_S3` (MinIO, Ceph, moto), `AWS_MAX_ATTEMPTS` and `AWS_RETRY_MODE`.
"""

from __future__ import annotations

import os
import pathlib
import uuid
from typing import Any

from maas_workloads.storage import (
    Location,
    ObjectNotFoundError,
    StorageConfigError,
    StorageError,
    StorageUnavailableError,
    clean_key,
    join_keys,
)

_CONFIG_ERROR_CODES = frozenset(
    {
        "NoSuchBucket",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidBucketName",
        "AllAccessDisabled",
        "AuthorizationHeaderMalformed",
        "PermanentRedirect",
    }
)


class S3Location(Location):
    """A bucket and key prefix on S3 or an S3-compatible server."""

    def __init__(self, bucket: str, prefix: str, client: Any | None = None) -> None:
        if not bucket:
            raise StorageConfigError("an s3:// URI needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = clean_key(prefix)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _s3_client()
        return self._client

    def _key(self, key: str) -> str:
        return join_keys(self.prefix, key)

    def child(self, prefix: str) -> S3Location:
        return S3Location(self.bucket, self._key(prefix), self._client)

    def _call(self, what: str, operation: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            return getattr(self.client, operation)(Bucket=self.bucket, **kwargs)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFoundError(f"{what}: not found") from error
            if code in _CONFIG_ERROR_CODES or status in (400, 403):
                hint = " (check the bucket name and the AWS_* credentials)" if status == 403 or code else ""
                raise StorageConfigError(f"{what}: {code or status} {error}{hint}") from error
            raise StorageUnavailableError(f"{what}: {code or status} {error}") from error
        except NoCredentialsError as error:
            raise StorageConfigError(
                f"{what}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (secretRef)"
            ) from error
        except BotoCoreError as error:
            raise StorageUnavailableError(f"{what}: {error}") from error

    def read_bytes(self, key: str) -> bytes:
        full = self._key(key)
        response = self._call(f"read s3://{self.bucket}/{full}", "get_object", Key=full)
        data: bytes = response["Body"].read()
        return data

    def read_prefix(self, key: str, size: int) -> bytes:
        full = self._key(key)
        response = self._call(f"read s3://{self.bucket}/{full}", "get_object", Key=full, Range=f"bytes=0-{size - 1}")
        data: bytes = response["Body"].read()
        return data

    def write_bytes(self, key: str, data: bytes) -> None:
        full = self._key(key)
        self._call(f"write s3://{self.bucket}/{full}", "put_object", Key=full, Body=data)

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            self._call(f"stat s3://{self.bucket}/{full}", "head_object", Key=full)
        except ObjectNotFoundError:
            return False
        return True

    def list_keys(self, prefix: str = "") -> list[str]:
        full = self._key(prefix)
        keys: list[str] = []
        kwargs: dict[str, Any] = {"Prefix": f"{full}/" if full else ""}
        while True:
            response = self._call(f"list s3://{self.bucket}/{full}", "list_objects_v2", **kwargs)
            for item in response.get("Contents", []):
                keys.append(item["Key"][len(self.prefix) + 1 :] if self.prefix else item["Key"])
            if not response.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = response["NextContinuationToken"]
        if not keys and full and self.exists(prefix):
            keys.append(clean_key(prefix))
        return sorted(keys)

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self._key(key)} for key in keys[start : start + 1000]]
            self._call(f"delete under s3://{self.bucket}", "delete_objects", Delete={"Objects": batch, "Quiet": True})

    def delete_prefix(self, prefix: str) -> None:
        self._delete_keys(self.list_keys(prefix))

    def upload_file(self, source: pathlib.Path, key: str) -> None:
        full = self._key(key)
        with source.open("rb") as handle:
            self._call(f"upload {source} to s3://{self.bucket}/{full}", "put_object", Key=full, Body=handle)

    def download_file(self, key: str, destination: pathlib.Path) -> None:
        full = self._key(key)
        response = self._call(f"download s3://{self.bucket}/{full}", "get_object", Key=full)
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.tmp")
        with temporary.open("wb") as handle:
            for chunk in response["Body"].iter_chunks(1 << 20):
                handle.write(chunk)
        temporary.replace(destination)

    def publish_directory(self, source: pathlib.Path, prefix: str, marker: str) -> None:
        if not (source / marker).is_file():
            raise StorageError(f"{source} has no {marker}: nothing marks it complete")
        prefix = clean_key(prefix)
        if not prefix and not self.prefix:
            raise StorageConfigError(f"cannot publish over the bucket root {self.uri}; give a prefix")
        marker_key = join_keys(prefix, marker)
        # A reader must stop trusting the old publication before any of its files change.
        self._delete_keys([marker_key])
        previous = set(self.list_keys(prefix))
        published = set()
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source).as_posix()
            if path.is_file() and relative != marker:
                key = join_keys(prefix, relative)
                self.upload_file(path, key)
                published.add(key)
        self._delete_keys(sorted(previous - published - {marker_key}))
        self.upload_file(source / marker, marker_key)


def _s3_client() -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError as error:  # pragma: no cover - the images carry boto3
        raise StorageConfigError("s3:// locations need boto3 (pip install 'maas-operator[train]')") from error
    # Fail over to the caller's retry policy quickly: the launcher maps an unreachable
    # store to a retried attempt rather than hanging inside one.
    config = Config(connect_timeout=10, read_timeout=60, retries={"mode": os.environ.get("AWS_RETRY_MODE", "standard")})
    return boto3.session.Session().client("s3", config=config)
