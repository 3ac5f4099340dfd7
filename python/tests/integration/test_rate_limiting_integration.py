"""The guide's two handlers, verbatim but for their imports, against a
DynamoDB-API server, and the package sharing its table with the
`ratelimit` command.

The server and the command come from the Rust test that runs these
(`cargo test -p ratelimiter-python`, or the workspace's `cargo test`): it
starts a DynamoDB-API server with the table, builds `ratelimit`, and says
where both are in RATELIMIT_TEST_DYNAMODB_ENDPOINT and RATELIMIT_TEST_CLI.
"""

import importlib.util
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from ratelimiter import RateLimitExceededError, RateLimitOperation, RateLimitService

# The handlers the Lambda example (examples/python) deploys: the tests run
# the very files it ships.
HANDLERS = Path(__file__).resolve().parents[3] / "examples" / "python" / "handlers"


@pytest.fixture
def table(monkeypatch):
    """The environment of a function whose table is the test server's."""
    endpoint = os.environ.get("RATELIMIT_TEST_DYNAMODB_ENDPOINT")
    if not endpoint:
        pytest.fail(
            "RATELIMIT_TEST_DYNAMODB_ENDPOINT is not set: run these tests through "
            "`cargo test -p ratelimiter-python`, which starts the DynamoDB-API server"
        )
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", endpoint)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("RATE_LIMIT_TIMEOUT_MS", "5000")
    return endpoint


def load(handler):
    """A fresh import of a handler module: its module-level service is
    built with the environment of the test."""
    name = f"{handler}_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(name, HANDLERS / f"{handler}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def connect_event(ip, user=None):
    authorizer = {"principalId": "me"}
    if user:
        authorizer["userId"] = user
    return {
        "requestContext": {
            "routeKey": "$connect",
            "connectionId": uuid.uuid4().hex,
            "identity": {"sourceIp": ip},
            "authorizer": authorizer,
        }
    }


def fresh_ip():
    n = uuid.uuid4().int
    return f"198.51.{n % 250}.{(n >> 8) % 250}"


def assert_limited(response, retry_after):
    assert response["statusCode"] == 429, response
    assert response["headers"]["Retry-After"] == str(retry_after)
    body = json.loads(response["body"])
    assert body["code"] == "RATE_LIMIT_EXCEEDED"
    assert body["message"] == f"Rate limit exceeded. Retry after {retry_after} seconds."
    assert body["details"] == {"retryAfter": retry_after}


def test_the_connect_handler_refuses_the_eleventh_listener(table):
    handler = load("connect_handler")
    ip = fresh_ip()
    for _ in range(10):
        # The guide's handler returns nothing when it lets a client in.
        assert handler.lambda_handler(connect_event(ip), None) is None
    assert_limited(handler.lambda_handler(connect_event(ip), None), 6)
    # Another address is another client.
    assert handler.lambda_handler(connect_event(fresh_ip()), None) is None


def test_the_connect_handler_limits_a_speakers_sessions(table, monkeypatch):
    monkeypatch.setenv("RATE_LIMIT_SESSIONS_PER_HOUR", "2")
    handler = load("connect_handler")
    user = f"user-{uuid.uuid4().hex}"
    for _ in range(2):
        assert handler.lambda_handler(connect_event(fresh_ip(), user), None) is None
    assert_limited(handler.lambda_handler(connect_event(fresh_ip(), user), None), 1800)


def test_the_heartbeat_handler_acks_twice_a_minute(table):
    handler = load("heartbeat_handler")
    event = {"requestContext": {"connectionId": f"conn-{uuid.uuid4().hex}"}}
    for _ in range(2):
        assert handler.lambda_handler(event, None) == {"statusCode": 200}
    assert_limited(handler.lambda_handler(event, None), 30)


def test_one_call_per_decision_and_none_for_a_known_denial(table):
    service = RateLimitService()
    connection = f"conn-{uuid.uuid4().hex}"
    for _ in range(2):
        verdict = service.check_heartbeat_limit(connection)
        assert (verdict.calls, verdict.cached, verdict.degraded) == (1, False, None)
        # One write unit: a small item, as DynamoDB bills it.
        assert (verdict.write_units, verdict.read_units) == (1, 0)
    with pytest.raises(RateLimitExceededError) as raised:
        service.check_heartbeat_limit(connection)
    # This process saw the bucket spent: refused without a call.
    assert (raised.value.verdict.calls, raised.value.verdict.cached) == (0, True)
    assert raised.value.verdict.write_units == 0


def ratelimit(*args, env=None):
    cli = os.environ.get("RATELIMIT_TEST_CLI")
    if not cli:
        pytest.fail("RATELIMIT_TEST_CLI is not set: run through `cargo test -p ratelimiter-python`")
    return subprocess.run(
        [cli, "--store", "dynamodb", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
    )


def test_one_table_one_bucket_with_the_ratelimit_command(table):
    connection = f"conn-{uuid.uuid4().hex}"
    # Used up by the command, denied here.
    for _ in range(2):
        checked = ratelimit("check", "heartbeat", connection)
        assert checked.returncode == 0, checked.stderr
    with pytest.raises(RateLimitExceededError):
        RateLimitService().check_heartbeat_limit(connection)
    # Used up here, denied by the command.
    other = f"conn-{uuid.uuid4().hex}"
    service = RateLimitService()
    service.check_heartbeat_limit(other)
    service.check_heartbeat_limit(other)
    denied = ratelimit("check", "heartbeat", other)
    assert denied.returncode == 1, denied.stdout + denied.stderr
    assert json.loads(denied.stdout)["retry_after"] == 30
    # And the status agrees.
    status = json.loads(ratelimit("status", "heartbeat", other).stdout)
    assert status["count"] == 2
    assert service.get_rate_limit_status(
        operation=RateLimitOperation.HEARTBEAT,
        identifier_type="connection",
        identifier_value=other,
    )["count"] == 2


def test_a_key_secret_gives_both_the_same_digests(table, monkeypatch):
    secret = "s" * 40
    monkeypatch.setenv("RATE_LIMIT_KEY_SECRET", secret)
    user = f"user-{uuid.uuid4().hex}"
    service = RateLimitService()
    for _ in range(3):
        service.check_session_creation_limit(user)
    status = json.loads(ratelimit("status", "session-create", user).stdout)
    assert status["count"] == 3
    # Under another secret, the same user is another key.
    other = json.loads(
        ratelimit("status", "session-create", user, env={"RATE_LIMIT_KEY_SECRET": "t" * 40}).stdout
    )
    assert other["count"] == 0
