"""Vault errors that the shared tree lacks."""

from __future__ import annotations

import grpc

from shared.errors import EmpireError


class DataLoss(EmpireError):
    """Stored data failed its integrity check: refused, never returned garbled."""

    code = grpc.StatusCode.DATA_LOSS
    default_reason = "CIPHERTEXT_INVALID"


class MasterKeyMismatch(RuntimeError):
    """The configured master key does not open this vault's keyring.

    Raised at start; the message names no key material.
    """
