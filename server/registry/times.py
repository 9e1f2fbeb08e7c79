"""Times as the registry stores them: UTC, fixed-width text, so that text order is time
order and SQLite compares them as it compares strings."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

__all__ = ["FUTURE_SKEW", "latest_accepted", "now_utc", "parse_time", "utc_text"]

# How far ahead of this machine's clock a consent time may be: other machines' clocks
# drift a little, but a time beyond this is a mistake (a local time exported with a Z,
# say) that would otherwise outrank every real change until it came to pass.
FUTURE_SKEW = timedelta(minutes=5)

# ASCII: \d alone also matches other scripts' digits, which would be stored as they are.
_CANONICAL_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z", re.ASCII)


def utc_text(moment: datetime) -> str:
    """``YYYY-MM-DDTHH:MM:SS.ffffffZ`` of an aware time."""
    # Not strftime: its %Y does not pad years before 1000, which breaks text order.
    return (
        moment.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds")
        + "Z"
    )


def now_utc() -> str:
    return utc_text(datetime.now(timezone.utc))


def latest_accepted() -> str:
    """The latest consent time accepted now (see ``FUTURE_SKEW``)."""
    return utc_text(datetime.now(timezone.utc) + FUTURE_SKEW)


def parse_time(text: str, name: str = "updated_at") -> str:
    """ISO 8601 with a timezone, as fixed-width UTC text. ``name`` is the field the
    errors name."""
    value = text.strip()
    if _CANONICAL_UTC.fullmatch(value):
        # The common export format: check the ranges, then pad instead of reformatting.
        try:
            datetime.fromisoformat(value[:19])
        except ValueError:
            raise ValueError(f"{name} is not an ISO 8601 time") from None
        return f"{value[:19]}.{value[20:-1]:0<6}Z"
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{name} has no timezone (add Z or an offset)")
    try:
        return utc_text(moment)
    except OverflowError:
        raise ValueError(f"{name} is outside years 1-9999 in UTC") from None
