"""Read-only fallback secrets from mounted files and environment variables.

Precedence for GetSecret: the database; during an outage, the in-memory copy;
then a file `<EMPIRE_VAULT_FALLBACK_DIR>/<key_id>` (a Kubernetes Secret volume);
then the variable `EMPIRE_VAULT_SECRET_<NAME>`, where NAME is the key id in
upper case with `/` as `__` and `-` or `.` as `_`. Fallback sources are never
written and have no versions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

ENV_PREFIX = "EMPIRE_VAULT_SECRET_"


def environment_name(key_id: str) -> str:
    name = key_id.upper().replace("/", "__").replace("-", "_").replace(".", "_")
    return ENV_PREFIX + name


class FallbackSecrets:
    def __init__(
        self,
        directory: Path | None,
        environ: Mapping[str, str] | None,
        max_bytes: int,
    ) -> None:
        self._directory = directory.resolve() if directory else None
        # Only the variables meant for the vault are kept from the environment.
        self._environ = {
            name: value
            for name, value in (environ or {}).items()
            if name.startswith(ENV_PREFIX)
        }
        self._max_bytes = max_bytes

    @property
    def enabled(self) -> bool:
        return self._directory is not None or bool(self._environ)

    def lookup(self, key_id: str) -> tuple[bytes, str] | None:
        """(value, "file" | "environment") for a validated key id, or None."""
        from_file = self._read_file(key_id)
        if from_file is not None:
            return from_file, "file"
        value = self._environ.get(environment_name(key_id))
        if value and self._fits(key_id, value.encode(), "environment"):
            return value.encode(), "environment"
        return None

    def _fits(self, key_id: str, value: bytes, source: str) -> bool:
        # A value cut to the limit would be served as a different secret.
        if len(value) <= self._max_bytes:
            return True
        logger.warning(
            "fallback secret %s in the %s exceeds %s bytes; not served",
            key_id,
            source,
            self._max_bytes,
        )
        return False

    def _read_file(self, key_id: str) -> bytes | None:
        if self._directory is None:
            return None
        path = (self._directory / key_id).resolve()
        # Key ids cannot hold "..", but a symlink in the volume could point out.
        if not path.is_relative_to(self._directory) or not path.is_file():
            return None
        try:
            with path.open("rb") as file:
                value = file.read(self._max_bytes + 1)
        except OSError as error:
            logger.warning(
                "cannot read fallback secret file for %s: %s",
                key_id,
                type(error).__name__,
            )
            return None
        return value if self._fits(key_id, value, "file") else None
