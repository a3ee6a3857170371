"""``server_offset``: what a round trip can and cannot tell about a server's clock."""

from __future__ import annotations

import pytest

from nuvom_kernel.clock import relearned_offset, server_offset


@pytest.mark.parametrize("server", [100.0, 100.0004, 100.001, 100.002 + 5e-6])
def test_a_reading_within_the_round_trip_is_the_same_clock(server: float) -> None:
    assert server_offset(server, 100.0, 100.002) == 0.0


@pytest.mark.parametrize("offset", [300.0, -300.0, 0.0021, -0.0021])
def test_an_offset_past_the_round_trip_is_kept(offset: float) -> None:
    assert server_offset(100.001 + offset, 100.0, 100.002) == pytest.approx(offset)


def test_a_long_trip_is_read_from_its_start() -> None:
    """A push of many chunks: the server's clock was read by its first statement, 50 ms in,
    though its replies came 4 s later; the server runs 3 s ahead."""
    assert server_offset(3.05, 0.0, 4.0) == pytest.approx(3.05)


def test_a_push_that_took_our_estimate_keeps_it_and_one_that_refused_it_relearns() -> None:
    assert relearned_offset(1000.4, 1000.0, 995.0, 995.001, 1.0) is None, \
        "the server used our estimate (within half the tolerance): keep it"
    assert relearned_offset(1002.0, 1000.0, 995.0, 995.001, 1.0) == pytest.approx(
        1002.0 - 995.0005), "the server used its own clock: learn the offset from it"
    assert relearned_offset(995.0004, None, 995.0, 995.001, 1.0) == 0.0, \
        "no estimate yet: learned, and on one host's clock it is 0"
