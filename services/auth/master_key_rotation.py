"""Moving what is stored under an accepted (old) master key to the current one.

Signing keys are few and their plaintext is at hand, so they are re-sealed at
start. Keyed hashes cannot be recomputed without the secret they hash: an API
key's hash is rewritten the next time it is used (`ApiKeyManager`), a refresh
token's disappears when it is rotated. What still depends on an accepted key is
counted at start and on every prune, in a log line and a gauge, so an operator
knows when the old key may be removed from the configuration.
"""

from __future__ import annotations

import logging

from prometheus_client import Gauge

from services.auth.secrets_box import MasterKey, SealError
from services.auth.signing_keys import seal_context
from services.auth.store import AuthStore

logger = logging.getLogger(__name__)

NOT_UNDER_CURRENT_KEY = Gauge(
    "empire_auth_hashes_under_accepted_master_keys",
    "Live API keys and refresh tokens still hashed under an accepted (old)"
    " master key; the old key may be removed once this is 0.",
    ["table"],
)


async def adopt_current_master_key(
    store: AuthStore, master_key: MasterKey, now_ms: int
) -> None:
    """Run once at start, before the keyring loads."""
    if not master_key.has_accepted_keys:
        labelled = await store.label_unlabelled_hashes(master_key.label)
        if labelled:
            logger.info(
                "labelled %s stored hashes with the master key's label", labelled
            )
    await _reseal_signing_keys(store, master_key)
    await report_hashes_under_accepted_keys(store, master_key, now_ms)


async def report_hashes_under_accepted_keys(
    store: AuthStore, master_key: MasterKey, now_ms: int
) -> dict[str, int]:
    counts = await store.count_hashes_not_under(master_key.label, now_ms)
    for table, count in counts.items():
        NOT_UNDER_CURRENT_KEY.labels(table).set(count)
    if any(counts.values()):
        logger.info(
            "still hashed under an accepted master key: %s API keys (rewritten on"
            " their next use), %s refresh tokens (gone once rotated or expired)",
            counts["api_keys"],
            counts["refresh_tokens"],
        )
    return counts


async def _reseal_signing_keys(store: AuthStore, master_key: MasterKey) -> None:
    _, rows = await store.fetch_keyring()
    for row in rows:
        if row.sealed_private_key is None:
            continue
        context = seal_context(row.key_id, row.algorithm)
        try:
            der, under_current = master_key.open_noting_key(
                row.sealed_private_key, context
            )
        except SealError:
            # The keyring reports this when it needs the key; an old key no
            # one will sign with again must not stop the service.
            logger.error(
                "signing key %s opens under no configured master key", row.key_id
            )
            continue
        if not under_current:
            resealed = master_key.seal(der, context)
            if await store.reseal_signing_key(
                row.key_id, row.sealed_private_key, resealed
            ):
                logger.info(
                    "re-sealed signing key %s under the current master key", row.key_id
                )
