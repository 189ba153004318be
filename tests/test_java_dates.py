"""Dates are read as ZStack's Java runtime reads them, and the simulator writes them as Java does.

A wall-clock time that occurs twice (a fall-back hour) or never (a spring-forward gap) is read in the
zone's standard time; before 1901-12-13 Java uses the zone's raw offset, not local mean time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from zstack_gateway.translate import parse_zstack_date
from zstack_sim import gson


def read(text: str, zone: str) -> datetime:
    ts = parse_zstack_date(text, ZoneInfo(zone))
    assert ts is not None, text
    return ts.ToDatetime(tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "zone", "utc"),
    [
        # Asia/Shanghai kept DST 1986-1991: 1986-09-14 02:00 went back to 01:00 (+09:00 -> +08:00).
        ("Sep 14, 1986 1:30:00 AM", "Asia/Shanghai", datetime(1986, 9, 13, 17, 30, tzinfo=UTC)),
        # New York, 2021-11-07 01:30 occurs twice: Java takes EST (-05:00).
        ("Nov 7, 2021 1:30:00 AM", "America/New_York", datetime(2021, 11, 7, 6, 30, tzinfo=UTC)),
        # A spring-forward gap: 2021-03-14 02:30 never happens; Java reads it in EST too.
        ("Mar 14, 2021 2:30:00 AM", "America/New_York", datetime(2021, 3, 14, 7, 30, tzinfo=UTC)),
        # Before 1901: the raw offset (+08:00), not Shanghai's local mean time (+08:05:43).
        ("Jan 1, 1900 12:00:00 AM", "Asia/Shanghai", datetime(1899, 12, 31, 16, 0, tzinfo=UTC)),
        # An ordinary time is unchanged.
        ("Jul 22, 2022 11:54:07 AM", "Asia/Shanghai", datetime(2022, 7, 22, 3, 54, 7, tzinfo=UTC)),
    ],
)
def test_dates_are_read_as_java_reads_them(text, zone, utc):
    assert read(text, zone) == utc


@pytest.mark.parametrize(
    ("utc", "zone"),
    [
        (datetime(1986, 9, 13, 17, 30, tzinfo=UTC), "Asia/Shanghai"),  # the second 01:30 (standard)
        (datetime(1899, 12, 31, 16, 0, tzinfo=UTC), "Asia/Shanghai"),
        (datetime(1850, 6, 1, 12, 0, tzinfo=UTC), "America/New_York"),
        (datetime(2021, 11, 7, 6, 30, tzinfo=UTC), "America/New_York"),
    ],
)
def test_what_the_simulator_writes_reads_back_to_the_same_instant(utc, zone):
    tz = ZoneInfo(zone)
    text = gson.format_date(utc, tz)
    assert read(text, zone) == utc
    assert gson.parse_date(text, tz).timestamp() == utc.timestamp()  # PEP 495: no == across zones in a fold


def test_the_simulator_writes_pre_1901_times_in_the_raw_offset():
    assert gson.format_date(datetime(1899, 12, 31, 16, 0, tzinfo=UTC), ZoneInfo("Asia/Shanghai")) == (
        "Jan 1, 1900 12:00:00 AM"
    )
