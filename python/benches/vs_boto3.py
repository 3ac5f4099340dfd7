"""The package against a boto3 implementation of the guide, on one
DynamoDB-API server, in one run. Driven by `vs_boto3.rs` (which starts
the server, makes the tables and the virtual environment); prints one
JSON object.

The boto3 side is the guide as its readers write it: a token bucket item
read with GetItem (consistent), refilled in Python, and written back with
PutItem on a condition (the version it read), read again on a conflict.
"""

import json
import os
import statistics
import sys
import time
import uuid

import boto3
from botocore.config import Config

from ratelimiter import RateLimitExceededError, RateLimitService

ROUNDS = int(os.environ.get("ROUNDS", "1000"))


class Boto3Buckets:
    """The guide's token bucket on boto3: 2 calls per allowed decision,
    1 per denial, more under contention."""

    def __init__(self, table, limit, period):
        self.table = table
        self.limit = limit
        self.rate = limit / period
        self.calls = 0

    def check(self, key):
        while True:
            now = time.time()
            self.calls += 1
            item = self.table.get_item(Key={"key": key}, ConsistentRead=True).get("Item")
            if item is None:
                tokens, version = float(self.limit), 0
            else:
                elapsed = now - float(item["updated"])
                tokens = min(self.limit, float(item["tokens"]) + elapsed * self.rate)
                version = int(item["version"])
            if tokens < 1:
                return False, int((1 - tokens) / self.rate) + 1
            self.calls += 1
            try:
                self.table.put_item(
                    Item={
                        "key": key,
                        "tokens": str(tokens - 1),
                        "updated": str(now),
                        "version": version + 1,
                    },
                    ConditionExpression="attribute_not_exists(#k) OR version = :v",
                    ExpressionAttributeNames={"#k": "key"},
                    ExpressionAttributeValues={":v": version},
                )
                return True, 0
            except self.table.meta.client.exceptions.ConditionalCheckFailedException:
                continue


def timed(decide, keys):
    """Each decision's time in µs, and the calls they made."""
    times, calls = [], 0
    for key in keys:
        started = time.perf_counter()
        calls += decide(key)
        times.append((time.perf_counter() - started) * 1e6)
    return {"calls": calls, "times_us": times}


def main():
    endpoint = os.environ["AWS_ENDPOINT_URL_DYNAMODB"]
    # Which sides to measure, and a prefix that makes this run's new keys
    # new: the bench runs this several times, alternating with the Rust
    # side.
    sides = os.environ.get("SIDES", "ratelimiter,boto3").split(",")
    prefix = os.environ.get("PREFIX", "py-")
    dynamodb = boto3.resource(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="us-east-1",
        config=Config(retries={"max_attempts": 1}),
    )
    seed_table = dynamodb.Table("SeedBuckets")
    if "boto3" in sides:
        seed_table = dynamodb.create_table(
            TableName="SeedBuckets",
            KeySchema=[{"AttributeName": "key", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "key", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    service = RateLimitService()
    results = {"new key": {}, "busy key": {}, "repeated denial": {}}

    # A new key: every decision allowed, on a key never seen.
    ours = lambda key: service.decide("connection_attempt", key).calls
    boto = Boto3Buckets(seed_table, 20, 60)

    def boto_new(key):
        before = boto.calls
        assert boto.check(key)[0]
        return boto.calls - before

    # Warm the clients and connections.
    for i in range(50):
        if "ratelimiter" in sides:
            ours(f"{prefix}warm-{i}")
        if "boto3" in sides:
            boto_new(f"{prefix}warm-{i}")
    keys = [f"{prefix}new-{uuid.uuid4().hex}" for _ in range(ROUNDS)]
    if "ratelimiter" in sides:
        results["new key"]["ratelimiter"] = timed(ours, keys)
    if "boto3" in sides:
        results["new key"]["boto3"] = timed(boto_new, [k + "b" for k in keys])

    # A busy key: one key, allowed each time (a limit far above the rounds).
    busy = Boto3Buckets(seed_table, 10 * ROUNDS, 60)

    def boto_busy(key):
        before = busy.calls
        assert busy.check(key)[0]
        return busy.calls - before

    if "ratelimiter" in sides:
        results["busy key"]["ratelimiter"] = timed(
            lambda key: service.decide("busy", key).calls, [f"{prefix}busy"] * ROUNDS
        )
    if "boto3" in sides:
        results["busy key"]["boto3"] = timed(boto_busy, [f"{prefix}busy"] * ROUNDS)

    # A repeated denial: a spent key asked again and again.
    spent = Boto3Buckets(seed_table, 2, 60)

    def ours_denied(key):
        verdict = service.decide("heartbeat", key)
        assert not verdict.allowed
        return verdict.calls

    def boto_denied(key):
        before = spent.calls
        assert not spent.check(key)[0]
        return spent.calls - before

    if "ratelimiter" in sides:
        for _ in range(2):
            service.decide("heartbeat", f"{prefix}spent")
        results["repeated denial"]["ratelimiter"] = timed(ours_denied, [f"{prefix}spent"] * ROUNDS)
    if "boto3" in sides:
        for _ in range(2):
            spent.check(f"{prefix}spent")
        results["repeated denial"]["boto3"] = timed(boto_denied, [f"{prefix}spent"] * ROUNDS)

    if os.environ.get("IMPORTS") == "1":
        # Import time, in a fresh interpreter each time.
        import subprocess

        imports = []
        for _ in range(20):
            out = subprocess.run(
                [sys.executable, "-X", "importtime", "-c", "import ratelimiter"],
                capture_output=True,
                text=True,
                check=True,
            )
            line = [l for l in out.stderr.splitlines() if l.rstrip().endswith("| ratelimiter")][-1]
            imports.append(int(line.split("|")[1]) / 1000)
        imports.sort()
        results["import ms"] = {"p50": statistics.median(imports), "max": imports[-1]}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
