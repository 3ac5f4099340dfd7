"""Rate limiting for serverless WebSocket APIs: the integration guide's
``RateLimitService`` on the Rust core, with token buckets in DynamoDB.

The guide's handlers run unchanged but for their imports::

    from ratelimiter import (
        RateLimitService, RateLimitExceededError, RateLimitOperation,
        rate_limit_error_response, error_response,
    )

    rate_limit_service = RateLimitService()   # at module level, reused

``RateLimitService()`` reads the same environment as the Rust functions
(``RATE_LIMIT_*``, ``RATE_LIMIT_CONFIG``, the AWS variables); an invalid
value raises ``ValueError`` at construction. It shares the table, keys and
semantics of the Rust functions and the ``ratelimit`` command.
"""

from __future__ import annotations

import enum
import json
import time
from typing import Any, Dict, List, Optional

from ratelimiter._native import Decided as Verdict
from ratelimiter._native import Service as _Service

__all__ = [
    "RateLimitService",
    "RateLimitExceededError",
    "RateLimitOperation",
    "Verdict",
    "rate_limit_error_response",
    "error_response",
]


class RateLimitOperation(str, enum.Enum):
    """The guide's four operations, named as their policies are."""

    SESSION_CREATE = "session_create"
    LISTENER_JOIN = "listener_join"
    CONNECTION_ATTEMPT = "connection_attempt"
    HEARTBEAT = "heartbeat"


class RateLimitExceededError(Exception):
    """A request over its limit: ``retry_after`` is in whole seconds, never
    0; ``verdict`` keeps the whole decision."""

    def __init__(self, retry_after: int, verdict: Optional[Verdict] = None) -> None:
        super().__init__(f"Rate limit exceeded. Retry after {retry_after} seconds.")
        self.retry_after = retry_after
        self.verdict = verdict


class RateLimitService:
    """The rate-limit service.

    ``store`` is ``"dynamodb"`` (the table ``RATE_LIMIT_TABLE_NAME`` names,
    its client made by the first call) or ``"memory"`` (this process only:
    for tests). Calls release the GIL while they wait on the table.
    """

    def __init__(self, store: str = "dynamodb") -> None:
        self._service = _Service(store)

    # The guide's checks: one token each, a denial raised.

    def check_connection_attempt_limit(self, ip_address: str) -> Verdict:
        """One connection attempt from ``ip_address``."""
        return self.check(RateLimitOperation.CONNECTION_ATTEMPT.value, ip_address)

    def check_listener_join_limit(self, ip_address: str) -> Verdict:
        """One listener join from ``ip_address``."""
        return self.check(RateLimitOperation.LISTENER_JOIN.value, ip_address)

    def check_session_creation_limit(self, user_id: str) -> Verdict:
        """One session created by ``user_id``."""
        return self.check(RateLimitOperation.SESSION_CREATE.value, user_id)

    def check_heartbeat_limit(self, connection_id: str) -> Verdict:
        """One heartbeat on ``connection_id``."""
        return self.check(RateLimitOperation.HEARTBEAT.value, connection_id)

    def get_rate_limit_status(
        self,
        operation: RateLimitOperation,
        identifier_type: str,
        identifier_value: str,
    ) -> Dict[str, int]:
        """The guide's status of one key, consuming nothing: ``count``,
        ``limit``, ``reset_in_seconds`` and ``window_duration``; for a
        policy of several limits, the fullest one's."""
        return self._service.get_rate_limit_status(
            _policy_name(operation), identifier_type, identifier_value
        )

    # The Rust API's calls, for any policy of the configuration.

    def decide(
        self,
        policy: str,
        identifier: str,
        cost: int = 1,
        tier: Optional[str] = None,
    ) -> Verdict:
        """Takes ``cost`` tokens of ``policy`` for ``identifier`` (in
        ``tier``): the verdict, allowed or not. ``cost=0`` asks whether a
        token is left, taking none."""
        return self._service.decide(_policy_name(policy), identifier, cost, tier)

    def check(
        self,
        policy: str,
        identifier: str,
        cost: int = 1,
        tier: Optional[str] = None,
    ) -> Verdict:
        """As :meth:`decide`, raising :class:`RateLimitExceededError` when
        denied."""
        verdict = self.decide(policy, identifier, cost, tier)
        if not verdict.allowed:
            raise RateLimitExceededError(verdict.retry_after, verdict)
        return verdict

    def status(
        self,
        policy: str,
        identifier: str,
        tier: Optional[str] = None,
        kind: Optional[str] = None,
    ) -> List[Dict[str, int]]:
        """Every limit's status of ``policy`` for ``identifier`` (counted
        as ``kind`` if given), consuming nothing."""
        return self._service.status(_policy_name(policy), identifier, tier, kind)

    def reset(self, policy: str, identifier: str, tier: Optional[str] = None) -> None:
        """Empties ``policy``'s buckets for ``identifier``."""
        self._service.reset(_policy_name(policy), identifier, tier)

    def policies(self) -> List[str]:
        """Every policy's name, the guide's four first."""
        return self._service.policies()


def _policy_name(policy: Any) -> str:
    if isinstance(policy, RateLimitOperation):
        return policy.value
    if isinstance(policy, str):
        return policy
    raise TypeError(
        f"a policy is a RateLimitOperation or a policy's name, got {type(policy).__name__}"
    )


def error_response(status_code: int, code: str, message: str) -> Dict[str, Any]:
    """A Lambda proxy response with the guide's error body, as a JSON string."""
    body = {
        "type": "error",
        "code": code,
        "message": message,
        "timestamp": int(time.time() * 1000),
    }
    return {
        "statusCode": status_code,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(body, separators=(",", ":")),
    }


def rate_limit_error_response(retry_after: int) -> Dict[str, Any]:
    """The guide's 429: its body with ``details.retryAfter``, and the
    ``Retry-After`` header."""
    response = error_response(
        429,
        "RATE_LIMIT_EXCEEDED",
        f"Rate limit exceeded. Retry after {retry_after} seconds.",
    )
    body = json.loads(response["body"])
    body["details"] = {"retryAfter": retry_after}
    response["body"] = json.dumps(body, separators=(",", ":"))
    response["headers"]["Retry-After"] = str(retry_after)
    return response
