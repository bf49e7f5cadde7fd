"""Signing keys rotate while the gateway runs, and it keeps accepting new tokens."""

from __future__ import annotations

import time

from tests.e2e.calls import jwt_header, rest
from tests.e2e.conftest import AUTH_KEY_LEAD_SECONDS, Suite

ROTATE = "/api/empire-security/signing-keys:rotate"


def _rotate(suite: Suite) -> dict:
    """Promote auth's next key, waiting out its publication lead if needed."""
    deadline = time.monotonic() + 4 * AUTH_KEY_LEAD_SECONDS + 5
    while True:
        answer = rest(suite.url, "POST", ROTATE, {}, suite.exchange())
        if answer.status == 200:
            return dict(answer.body)
        # NEXT_KEY_TOO_NEW: the next key has not been published long enough for
        # every verifier's cache to hold it; auth refuses to sign with it yet.
        too_new = "NEXT_KEY_TOO_NEW" in str(answer.body) or (
            answer.headers.get("grpc-status") == "9"  # FAILED_PRECONDITION
        )
        assert answer.status == 400 and too_new, (answer.status, answer.body)
        assert time.monotonic() < deadline, "auth never let the key rotate"
        time.sleep(0.25)


def test_tokens_signed_after_rotation_pass_the_running_gateway(suite: Suite) -> None:
    gateway_pid = suite.gateway.pid
    before = suite.exchange()
    signing_keys = {jwt_header(before)["kid"]}

    # Twice: the second promotes a key created by the first rotation, after
    # the gateway had fetched its key set, so only a refetch can know it.
    for _ in range(2):
        rotation = _rotate(suite)
        token = suite.exchange()
        kid = jwt_header(token)["kid"]
        answer = rest(suite.url, "GET", "/api/empire-security/secrets", token=token)

        assert kid == rotation["current_key"]["key_id"]
        assert kid not in signing_keys
        assert answer.status == 200, answer.body
        signing_keys.add(kid)

    still_valid = rest(suite.url, "GET", "/api/empire-security/secrets", token=before)
    assert still_valid.status == 200, still_valid.body
    assert suite.gateway.pid == gateway_pid
    assert suite.gateway.process is not None and suite.gateway.process.poll() is None
