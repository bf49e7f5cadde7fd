"""Prompt text quoted in a provider's reason is cut out before it is repeated."""

from __future__ import annotations

import pytest

from services.llm.models import ErrorClass, ProviderFailure
from services.llm.redaction import REDACTED, redact_failure, without_prompt

PROMPT = ["You are terse.", "Tell me how the violet heron nests, please."]


def test_a_quoted_run_of_words_is_replaced() -> None:
    reason = 'Rejected. Flagged input: "how the violet heron nests".'
    assert without_prompt(reason, PROMPT) == f'Rejected. Flagged input: "{REDACTED}".'


def test_case_punctuation_and_spacing_do_not_hide_a_quote() -> None:
    reason = "flagged: TELL me,  how-the Violet"
    assert without_prompt(reason, PROMPT) == f"flagged: {REDACTED}"


def test_a_quote_spanning_two_messages_is_found_in_either() -> None:
    assert without_prompt("saw: you are terse", PROMPT) == f"saw: {REDACTED}"


def test_a_single_long_word_from_the_prompt_is_replaced() -> None:
    reason = "the key sk-proj-abcdefghijklmnop is not allowed"
    prompt = ["use sk-proj-abcdefghijklmnop for this"]
    redacted = without_prompt(reason, prompt)
    assert "abcdefghijklmnop" not in redacted
    assert redacted.startswith("the key ") and redacted.endswith(" is not allowed")


def test_short_common_words_shared_with_the_prompt_stay() -> None:
    reason = "Your request was rejected by the safety system."
    assert without_prompt(reason, PROMPT) == reason


def test_an_empty_prompt_or_reason_changes_nothing() -> None:
    assert without_prompt("a b c", []) == "a b c"
    assert without_prompt("", PROMPT) == ""


@pytest.mark.parametrize(
    "status",
    [
        pytest.param(400, id="4xx-body"),
        pytest.param(200, id="error-event-in-a-200-stream"),
        pytest.param(0, id="error-chunk-without-status"),
    ],
)
def test_text_quoting_the_provider_is_redacted_whatever_its_status(
    status: int,
) -> None:
    quoting = ProviderFailure(
        ErrorClass.BAD_REQUEST,
        "flagged: violet heron nests",
        http_status=status,
        provider_text=True,
    )

    redacted = redact_failure(quoting, PROMPT)

    assert redacted.message == f"flagged: {REDACTED}"
    assert redacted.error_class is ErrorClass.BAD_REQUEST
    assert redacted.http_status == status
    assert redacted.provider_text


def test_this_services_own_text_is_left_alone() -> None:
    own = ProviderFailure(ErrorClass.TIMEOUT, "the violet heron nests", http_status=400)
    assert redact_failure(own, PROMPT) is own
