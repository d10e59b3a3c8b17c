"""Exact conversions between Python times and the integer Unix nanoseconds the stores keep.

Stores keep every timestamp (of events, snapshots, durable states) as an ``int`` of
nanoseconds since 1970-01-01 UTC. Converting a :class:`datetime.datetime` goes through its
days, seconds and microseconds in integer arithmetic, never through a float, so a
microsecond-precise datetime lands on its exact nanosecond:

    >>> from datetime import datetime, timezone
    >>> unix_nanos(datetime(2026, 1, 1, 12, 0, 0, 54, tzinfo=timezone.utc))
    1767268800000054000
    >>> from_unix_nanos(1767268800000054999)
    datetime.datetime(2026, 1, 1, 12, 0, 0, 54, tzinfo=datetime.timezone.utc)

- A **naive** datetime (no ``tzinfo``) is local time, as :meth:`datetime.datetime.timestamp`
  takes it. Give a ``tzinfo`` (``timezone.utc``) to say what you mean.
- A **datetime cannot hold nanoseconds**: :func:`from_unix_nanos` floors to the microsecond.
  Every object that carries a timestamp also has it exactly as an ``int``
  (``PersistedEvent.timestamp_ns``).
- **Seconds**: an ``int`` of seconds is exact; a ``float`` of seconds is converted from its
  exact binary value, rounded to the nearest nanosecond, but a float of today's Unix time only
  has about a quarter of a microsecond of precision, so it is approximate: use a datetime or
  an ``int`` of nanoseconds for an exact point in time.
"""

from __future__ import annotations

import datetime
import math
from fractions import Fraction

from ego.errors import ValidationError

__all__ = ["I64_MAX", "I64_MIN", "from_unix_nanos", "seconds_to_nanos", "to_nanos", "unix_nanos"]

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
_NS_PER_SECOND = 1_000_000_000
_NS_PER_DAY = 86_400 * _NS_PER_SECOND


def unix_nanos(moment: datetime.datetime) -> int:
    """The exact Unix time in nanoseconds of ``moment`` (``int``; may be negative before 1970).

    Naive datetimes are local time. Raises :class:`~ego.errors.ValidationError` for anything
    that is not a :class:`datetime.datetime` (a :class:`datetime.date` has no time of day).

        >>> unix_nanos(datetime.datetime(1970, 1, 1, 0, 0, 1, 5, tzinfo=datetime.timezone.utc))
        1000005000
    """
    if not isinstance(moment, datetime.datetime):
        raise ValidationError(f"expected a datetime.datetime, got {type(moment).__name__}")
    if moment.tzinfo is None or moment.tzinfo.utcoffset(moment) is None:
        moment = moment.astimezone()  # local time, as datetime.timestamp() takes it
    delta = moment - EPOCH
    return delta.days * _NS_PER_DAY + delta.seconds * _NS_PER_SECOND + delta.microseconds * 1_000


def from_unix_nanos(nanos: int) -> datetime.datetime:
    """The UTC datetime of ``nanos`` Unix nanoseconds, floored to the microsecond (a datetime
    has no nanoseconds). Raises :class:`~ego.errors.ValidationError` if ``nanos`` is not an
    ``int`` or is outside the years 1..9999.

        >>> from_unix_nanos(1_500)
        datetime.datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=datetime.timezone.utc)
    """
    if not isinstance(nanos, int):
        raise ValidationError(f"expected an int of nanoseconds, got {type(nanos).__name__}")
    try:
        return EPOCH + datetime.timedelta(microseconds=nanos // 1_000)
    except OverflowError:
        raise ValidationError(f"{nanos} ns is outside the range of datetime") from None


def seconds_to_nanos(seconds: float) -> int:
    """Unix ``seconds`` (``int``: exact; ``float``: approximate, see the module) in
    nanoseconds. Raises :class:`~ego.errors.ValidationError` for NaN, infinities and
    non-numbers.

        >>> seconds_to_nanos(2)
        2000000000
    """
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise ValidationError(f"expected seconds as an int or a float, got {type(seconds).__name__}")
    if isinstance(seconds, int):
        return seconds * _NS_PER_SECOND
    if not math.isfinite(seconds):
        raise ValidationError(f"a point in time must be finite, got {seconds}")
    return round(Fraction(seconds) * _NS_PER_SECOND)


def to_nanos(moment: datetime.datetime | float) -> int:
    """A point in time as Unix nanoseconds, clamped to the range stores keep (``int64``): a
    datetime (exact), or Unix seconds (:func:`seconds_to_nanos`).

        >>> to_nanos(datetime.datetime(9999, 1, 1, tzinfo=datetime.timezone.utc)) == I64_MAX
        True
    """
    nanos = unix_nanos(moment) if isinstance(moment, datetime.datetime) else seconds_to_nanos(moment)
    return min(max(nanos, I64_MIN), I64_MAX)
