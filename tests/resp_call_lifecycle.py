"""A second-language check of the RESP port: redis-py (Debian's python3-redis)
runs the lifecycle of a call the way a routing service would. Run by
tests/resp.rs with the leader's RESP host and port."""
import json
import sys

import redis

host, port = sys.argv[1], int(sys.argv[2])
r = redis.Redis(host=host, port=port, decode_responses=True)

assert r.ping()
key = "call/py-42"
# A dispatcher watches every call: a subscription to the key prefix.
watcher = r.pubsub()
watcher.subscribe("call/")
assert watcher.get_message(timeout=5)["type"] == "subscribe"
# The call starts ringing: an insert (NX) that expires if nobody finishes it.
assert r.set(key, "ringing", nx=True, ex=3600) is True
assert r.set(key, "ringing", nx=True) is None, "a second insert is refused"
assert r.get(key) == "ringing"
assert 3590 <= r.ttl(key) <= 3600

# Answered: an update conditional on the version we read.
record = r.execute_command("RECORD", key)
fields = dict(zip(record[::2], record[1::2])) if isinstance(record, list) else record
version = int(fields["version"])
assert fields["state"] == "live"
assert r.execute_command("IF.SET", key, version, "answered") == version + 1
assert r.execute_command("IF.SET", key, version, "stale writer") is None

# Pipelined reads, the way a router batches its lookups.
with r.pipeline(transaction=False) as p:
    p.get(key)
    p.exists(key)
    p.get("call/py-missing")
    assert p.execute() == ["answered", 1, None]

# Hung up: the record completes, becomes immutable and is handed off.
assert r.execute_command("COMPLETE", key, "ended") == version + 2
try:
    r.set(key, "again")
    raise SystemExit("a completed record accepted a write")
except redis.exceptions.ResponseError as e:
    assert "immutable" in str(e), e

# An atomic batch of inserts with MULTI/EXEC.
with r.pipeline(transaction=True) as p:
    p.set("sms/py-1", "queued", nx=True)
    p.set("sms/py-2", "queued", nx=True)
    assert p.execute() == [True, True]
assert sorted(r.scan_iter(match="sms/py-*", count=1)) == ["sms/py-1", "sms/py-2"]

# The dispatcher saw the call's changes, in order, one JSON object each.
changes = []
while len(changes) < 3:
    m = watcher.get_message(timeout=10)
    assert m is not None, f"no message after {changes}"
    if m["type"] == "message":
        change = json.loads(m["data"])
        if change["key"] == key:
            changes.append((change["type"], change["value"]))
assert changes == [
    ("inserted", "ringing"),
    ("updated", "answered"),
    ("completed", "ended"),
], changes
watcher.close()
print("call lifecycle: ok")
