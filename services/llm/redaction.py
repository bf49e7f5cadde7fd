"""Keeps the caller's prompt out of the provider reasons this service repeats.

A provider's own reason is passed on to the caller (a content-policy refusal
must say why), shown in `GetProviderHealth` and logged. Some providers quote
the offending input in that message, and the prompt must never reach an error
message or a log line. So any run of the prompt's words found in a reason is
replaced before the reason leaves the router.

Matching is on lower-cased word sequences, ignoring punctuation and spacing,
so a quote wrapped in quotation marks or re-spaced by the provider is still
found. A run counts as a quote from three words, or from a single word of
`_MIN_QUOTE_CHARS` characters (a pasted key or identifier). Short common words
that happen to appear in both are left alone, so the reason stays readable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from services.llm.models import ProviderFailure

REDACTED = "[prompt text]"
_WORD = re.compile(r"\w+")
_MIN_QUOTE_WORDS = 3
_MIN_QUOTE_CHARS = 12


def without_prompt(reason: str, prompt: Iterable[str]) -> str:
    """`reason` with every run of words quoted from `prompt` replaced."""
    words = list(_WORD.finditer(reason))
    if not words:
        return reason
    # Padded with spaces so a lookup matches whole words only.
    haystack = " " + " ".join(_words_of(prompt)) + " "
    if haystack == "  ":
        return reason
    pieces: list[str] = []
    written_to = 0  # where in `reason` the copy has reached
    start = 0
    while start < len(words):
        end = _longest_run(words, start, haystack)
        if _is_quote(words[start:end]):
            pieces.append(reason[written_to : words[start].start()])
            pieces.append(REDACTED)
            written_to = words[end - 1].end()
            start = end
        else:
            start += 1
    pieces.append(reason[written_to:])
    return "".join(pieces)


def redact_failure(failure: ProviderFailure, prompt: Iterable[str]) -> ProviderFailure:
    """The same failure, its message cleared of quoted prompt text.

    Only messages that quote the provider (`provider_text`, whatever the HTTP
    status: an error event inside a stream comes with a 200) can carry its
    words; the others are this service's own fixed text, returned unchanged.
    """
    if not failure.provider_text:
        return failure
    message = without_prompt(failure.message, prompt)
    if message == failure.message:
        return failure
    return ProviderFailure(
        failure.error_class,
        message,
        http_status=failure.http_status,
        retry_after=failure.retry_after,
        provider_text=True,
    )


def _words_of(texts: Iterable[str]) -> Iterable[str]:
    for text in texts:
        for match in _WORD.finditer(text):
            yield match.group().lower()


def _longest_run(words: list[re.Match[str]], start: int, haystack: str) -> int:
    """The end of the longest run of words from `start` found in `haystack`.

    Returns `start` when not even the first word is there. A run that is found
    has every shorter prefix found too, so the first miss ends the search.
    """
    end = start
    while end < len(words):
        run = " ".join(word.group().lower() for word in words[start : end + 1])
        if f" {run} " not in haystack:
            break
        end += 1
    return end


def _is_quote(run: list[re.Match[str]]) -> bool:
    if len(run) >= _MIN_QUOTE_WORDS:
        return True
    return any(len(word.group()) >= _MIN_QUOTE_CHARS for word in run)
