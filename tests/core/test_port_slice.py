"""free_port within the slice PGMGR_PORT_SLICE gives: the suite's parallel workers (see
tests/conftest.py) never pick one port, so neither's server fails to bind it because the
other's took it between the pick and the bind."""

from __future__ import annotations

import pytest

from pgmgr.core import listen


@pytest.mark.parametrize("index", [0, 1, 2])
def test_free_ports_of_a_slice(monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    monkeypatch.setenv(listen.PORT_SLICE_ENV, f"{index}/3")
    ports = {listen.free_port("127.0.0.1") for _ in range(20)}
    assert {p // 2 % 3 for p in ports} == {index}, ports


@pytest.mark.parametrize("value", ["", "3/3", "1/9", "x/2", "1/"])
def test_no_slice_or_a_wrong_one_is_every_port(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(listen.PORT_SLICE_ENV, value)
    ports = {listen.free_port("127.0.0.1") for _ in range(40)}
    assert len({p // 2 % 2 for p in ports}) == 2, ports  # both halves: 2**-39 to fail by chance
