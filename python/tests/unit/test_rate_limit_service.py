"""The guide's RateLimitService on the memory store: its checks, errors,
status and responses, configuration, and the Rust API's calls."""

import json
import logging

import pytest

from ratelimiter import (
    RateLimitExceededError,
    RateLimitOperation,
    RateLimitService,
    Verdict,
    error_response,
    rate_limit_error_response,
)


def memory():
    return RateLimitService(store="memory")


def test_the_third_heartbeat_in_a_minute_is_refused_for_thirty_seconds():
    service = memory()
    for remaining in (1, 0):
        verdict = service.check_heartbeat_limit("conn-1")
        assert isinstance(verdict, Verdict)
        assert verdict.allowed and verdict.remaining == remaining
    with pytest.raises(RateLimitExceededError) as raised:
        service.check_heartbeat_limit("conn-1")
    error = raised.value
    assert isinstance(error, Exception)
    assert error.retry_after == 30
    assert str(error) == "Rate limit exceeded. Retry after 30 seconds."
    assert error.verdict.policy == "heartbeat" and not error.verdict.allowed
    # Another connection is another bucket.
    assert service.check_heartbeat_limit("conn-2").allowed


def test_the_guides_defaults_for_every_check():
    service = memory()
    for check, key, limit in [
        (service.check_connection_attempt_limit, "203.0.113.1", 20),
        (service.check_listener_join_limit, "203.0.113.1", 10),
        (service.check_session_creation_limit, "user-123", 50),
        (service.check_heartbeat_limit, "conn-1", 2),
    ]:
        for _ in range(limit):
            check(key)
        with pytest.raises(RateLimitExceededError) as raised:
            check(key)
        assert raised.value.retry_after >= 1


def test_limits_come_from_the_guides_variables(monkeypatch):
    monkeypatch.setenv("RATE_LIMIT_SESSIONS_PER_HOUR", "2")
    service = memory()
    service.check_session_creation_limit("alice")
    service.check_session_creation_limit("alice")
    with pytest.raises(RateLimitExceededError) as raised:
        service.check_session_creation_limit("alice")
    assert raised.value.retry_after == 1800


def test_status_is_the_guides_dict_and_consumes_nothing():
    service = memory()
    for _ in range(15):
        service.check_session_creation_limit("user-123")
    status = service.get_rate_limit_status(
        operation=RateLimitOperation.SESSION_CREATE,
        identifier_type="user",
        identifier_value="user-123",
    )
    assert set(status) == {"count", "limit", "reset_in_seconds", "window_duration"}
    assert status["count"] == 15 and status["limit"] == 50
    assert status["window_duration"] == 3600
    assert 0 < status["reset_in_seconds"] <= 1080
    again = service.get_rate_limit_status(
        operation=RateLimitOperation.SESSION_CREATE,
        identifier_type="user",
        identifier_value="user-123",
    )
    assert again["count"] == 15


def test_the_operations_are_the_policies_names():
    assert [op.value for op in RateLimitOperation] == [
        "session_create",
        "listener_join",
        "connection_attempt",
        "heartbeat",
    ]
    assert memory().policies()[:4] == [op.value for op in RateLimitOperation]


def test_the_responses_are_the_guides():
    response = rate_limit_error_response(45)
    assert response["statusCode"] == 429
    assert response["headers"]["Retry-After"] == "45"
    body = json.loads(response["body"])
    assert list(body) == ["type", "code", "message", "timestamp", "details"]
    assert body["type"] == "error" and body["code"] == "RATE_LIMIT_EXCEEDED"
    assert body["message"] == "Rate limit exceeded. Retry after 45 seconds."
    assert body["details"] == {"retryAfter": 45}
    assert body["timestamp"] > 1_600_000_000_000
    response = error_response(500, "INTERNAL_ERROR", "Internal server error")
    assert response["statusCode"] == 500
    body = json.loads(response["body"])
    assert body["code"] == "INTERNAL_ERROR" and "details" not in body


@pytest.mark.parametrize(
    "name, value, message",
    [
        (
            "RATE_LIMIT_HEARTBEATS_PER_MIN",
            "0",
            'RATE_LIMIT_HEARTBEATS_PER_MIN must be a positive integer (1 to 4294967295), got "0"',
        ),
        ("RATE_LIMIT_FAILURE_MODE", "maybe", "RATE_LIMIT_FAILURE_MODE"),
        ("RATE_LIMIT_CONFIG", "no-such-file.toml", "no-such-file.toml"),
    ],
)
def test_a_bad_configuration_raises_at_construction(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    for store in ("memory", "dynamodb"):
        with pytest.raises(ValueError) as raised:
            RateLimitService(store=store)
        assert message in str(raised.value)


def test_an_unknown_store_or_policy_is_a_clear_error():
    with pytest.raises(ValueError, match='store must be "dynamodb" or "memory", got "redis"'):
        RateLimitService(store="redis")
    with pytest.raises(ValueError) as raised:
        memory().decide("no_such_policy", "x")
    assert "no_such_policy" in str(raised.value)
    with pytest.raises(TypeError):
        memory().decide(42, "x")


def test_policies_from_a_file_with_cost_tier_status_and_reset(tmp_path, monkeypatch):
    (tmp_path / "limits.toml").write_text(
        '[policy.api_calls]\nkey = "tenant"\nlimits = ["10/min", "100/h"]\n'
        '[policy.api_calls.tier.pro]\nlimits = ["20/min"]\n'
    )
    monkeypatch.setenv("RATE_LIMIT_CONFIG", str(tmp_path / "limits.toml"))
    service = memory()
    assert "api_calls" in service.policies()
    verdict = service.decide("api_calls", "acme", cost=4)
    assert verdict.allowed and verdict.remaining == 6
    assert [limit["limit"] for limit in verdict.limits] == [10, 100]
    refused = service.decide("api_calls", "acme", cost=7)
    assert not refused.allowed and refused.retry_after == 6
    # A probe (cost 0) takes nothing.
    assert service.decide("api_calls", "acme", cost=0).remaining == 6
    statuses = service.status("api_calls", "acme")
    assert [s["count"] for s in statuses] == [4, 4]
    # The pro tier has its own limits.
    assert service.decide("api_calls", "acme", cost=20, tier="pro").allowed
    service.reset("api_calls", "acme")
    assert service.status("api_calls", "acme")[0]["count"] == 0
    service.check("api_calls", "globex", cost=10)
    with pytest.raises(RateLimitExceededError):
        service.check("api_calls", "globex")
    # More than a bucket holds can never pass: an error, not a denial.
    with pytest.raises(ValueError, match="a cost of 11 exceeds the capacity of 10 tokens"):
        service.check("api_calls", "initech", cost=11)


def test_shadow_mode_allows_and_says_it_would_deny(monkeypatch):
    monkeypatch.setenv("RATE_LIMIT_SHADOW_MODE", "true")
    service = memory()
    for _ in range(2):
        service.check_heartbeat_limit("conn-s")
    verdict = service.check_heartbeat_limit("conn-s")
    assert verdict.allowed and verdict.would_deny


def unreachable_table(monkeypatch, mode=None):
    """A service on a table nobody answers for: connections refused."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    if mode:
        monkeypatch.setenv("RATE_LIMIT_FAILURE_MODE", mode)
    return RateLimitService()


def test_an_unavailable_table_fails_open_with_a_warning_through_logging(monkeypatch, caplog):
    service = unreachable_table(monkeypatch)
    with caplog.at_level(logging.WARNING):
        verdict = service.check_connection_attempt_limit("203.0.113.7")
    assert verdict.allowed
    assert verdict.degraded == "unavailable"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "the fail-open warning reaches Python's logging"
    assert [(r.name, r.levelname) for r in warnings] == [("ratelimiter.failure", "WARNING")]
    assert "rate-limit store unavailable" in warnings[0].getMessage()
    assert "fail open: allowed" in warnings[0].getMessage()


def test_rust_events_reach_logging_with_their_module_and_level(monkeypatch, caplog):
    """A shadow-mode denial is logged at INFO by the Rust module
    `ratelimiter::service`: Python's logger `ratelimiter.service` gets it at
    INFO, and only when its level lets INFO through, as set when the
    service was made."""
    monkeypatch.setenv("RATE_LIMIT_SHADOW_MODE", "true")

    def shadow_denial(service):
        caplog.clear()
        for _ in range(3):
            service.check_heartbeat_limit("conn-log")
        return [r for r in caplog.records if r.name.startswith("ratelimiter")]

    with caplog.at_level(logging.WARNING, logger="ratelimiter"):
        assert shadow_denial(memory()) == []
    with caplog.at_level(logging.INFO, logger="ratelimiter"):
        records = shadow_denial(memory())
    assert [(r.name, r.levelno) for r in records] == [("ratelimiter.service", logging.INFO)]
    message = records[0].getMessage()
    assert "rate limit would deny (shadow mode): allowed" in message
    assert "heartbeat" in message, message


def test_closed_and_local_modes_on_an_unavailable_table(monkeypatch):
    closed = unreachable_table(monkeypatch, "closed")
    with pytest.raises(RateLimitExceededError) as raised:
        closed.check_connection_attempt_limit("203.0.113.8")
    assert raised.value.verdict.degraded == "unavailable"
    local = unreachable_table(monkeypatch, "local")
    for _ in range(2):
        assert local.check_heartbeat_limit("conn-l").allowed
    with pytest.raises(RateLimitExceededError):
        local.check_heartbeat_limit("conn-l")


def test_a_call_waiting_on_the_table_releases_the_gil(monkeypatch):
    """While one thread waits on DynamoDB, Python threads run: a table that
    answers only when the main thread says so (a Python thread, which needs
    the GIL to accept and read the request) sees the request while the
    check is still waiting."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    received = threading.Event()
    release = threading.Event()

    def table():
        connection, _ = listener.accept()
        connection.recv(65536)
        received.set()
        release.wait(30)
        connection.close()

    threading.Thread(target=table, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", f"http://127.0.0.1:{listener.getsockname()[1]}")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("RATE_LIMIT_TIMEOUT_MS", "60000")
    monkeypatch.setenv("RATE_LIMIT_CONNECT_TIMEOUT_MS", "60000")
    service = RateLimitService()
    results = []
    checker = threading.Thread(
        target=lambda: results.append(service.decide("heartbeat", "conn-gil"))
    )
    checker.start()
    assert received.wait(30), "the table's thread never ran while the check waited"
    assert checker.is_alive(), "the check is still waiting for the table"
    release.set()
    checker.join(30)
    # The table closed without answering: the failure mode (open) decided.
    assert results and results[0].allowed and results[0].degraded is not None
    listener.close()
