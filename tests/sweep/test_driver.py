"""Joining Ray: a Ray Client session that fails to start is retried, and what cannot be joined is
one line."""

from __future__ import annotations

import pytest
import ray

from harness.errors import InputError
from harness.sweep import _driver

ADDRESS = "ray://10.0.0.7:10001"


@pytest.fixture
def init_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Return the list ray.shutdown's calls are recorded in, retrying at once."""
    calls: list[str] = []
    monkeypatch.setattr(_driver, "CLIENT_RETRY_SECONDS", 0.0)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("shutdown"))
    return calls


def _failing_init(calls: list[str], failures: list[Exception]):
    def init(address: str, **_: object) -> None:
        calls.append(f"init {address}")
        if failures:
            raise failures.pop(0)

    return init


def test_a_client_session_that_dies_while_starting_is_retried(init_calls, monkeypatch) -> None:
    aborted = ConnectionAbortedError("Initialization failure from server:\nRuntimeError: server failed.")
    monkeypatch.setattr(ray, "init", _failing_init(init_calls, [aborted, aborted]))
    _driver._init_ray(ADDRESS)
    assert init_calls == [f"init {ADDRESS}", "shutdown"] * 2 + [f"init {ADDRESS}"]


def test_a_client_session_that_never_starts_is_one_line(init_calls, monkeypatch) -> None:
    aborted = [ConnectionAbortedError("Initialization failure from server:\nRuntimeError: server failed.")] * 3
    monkeypatch.setattr(ray, "init", _failing_init(init_calls, list(aborted)))
    with pytest.raises(InputError) as raised:
        _driver._init_ray(ADDRESS)
    assert str(raised.value).startswith(f"--address {ADDRESS}: no Ray Client session after 3 tries")
    assert "RuntimeError: server failed." in str(raised.value) and "\n" not in str(raised.value)
    assert init_calls.count("shutdown") == 3


def test_an_unreachable_client_head_is_not_retried(init_calls, monkeypatch) -> None:
    monkeypatch.setattr(ray, "init", _failing_init(init_calls, [ConnectionError("ray client connection timeout")]))
    with pytest.raises(InputError, match=r"no Ray Client session \(ray client connection timeout\)"):
        _driver._init_ray(ADDRESS)
    assert init_calls == [f"init {ADDRESS}", "shutdown"]


def test_a_cluster_address_that_fails_raises_what_ray_raised(init_calls, monkeypatch) -> None:
    monkeypatch.setattr(ray, "init", _failing_init(init_calls, [ConnectionError("GCS unreachable")]))
    with pytest.raises(ConnectionError, match="GCS unreachable"):
        _driver._init_ray("10.0.0.7:6379")
