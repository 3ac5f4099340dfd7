"""The type stubs: they match the native module (mypy's stubtest), and a
caller's mistakes are found by mypy --strict, with nothing else flagged."""

import subprocess
import sys
import textwrap


def mypy(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_the_stubs_match_the_native_module(tmp_path):
    checked = mypy("mypy.stubtest", "ratelimiter._native", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_mypy_strict_knows_every_name_and_signature(tmp_path):
    (tmp_path / "handler.py").write_text(
        textwrap.dedent(
            """
            from ratelimiter import (
                RateLimitExceededError, RateLimitOperation, RateLimitService,
                Verdict, error_response, rate_limit_error_response,
            )

            service = RateLimitService(store="memory")
            verdict: Verdict = service.check_heartbeat_limit("conn-1")
            wait: int = verdict.retry_after
            limits: list[dict[str, int]] = verdict.limits
            status = service.get_rate_limit_status(
                operation=RateLimitOperation.HEARTBEAT,
                identifier_type="connection",
                identifier_value="conn-1",
            )
            count: int = status["count"]
            try:
                service.check("heartbeat", "conn-1", cost=2, tier="pro")
            except RateLimitExceededError as e:
                response = rate_limit_error_response(e.retry_after)
            service.decide("heartbeat", 42)
            """
        )
    )
    checked = mypy("mypy", "--strict", "--no-incremental", "handler.py", cwd=tmp_path)
    lines = [line for line in checked.stdout.splitlines() if ": error:" in line]
    assert len(lines) == 1, checked.stdout
    assert 'Argument 2 to "decide"' in lines[0] and '"int"; expected "str"' in lines[0]
