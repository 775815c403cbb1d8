"""Schemathesis hooks for tests/api/schemathesis.rs (loaded through SCHEMATHESIS_HOOKS).

Two adjustments to what is sent, each keeping invalid values as generated so that their
refusal is still tested:

- An Idempotency-Key is unique per intended order; that is the contract's one rule no
  schema can state. Generated keys repeat (short values, the coverage phase's fixed ones),
  and a key reused with another body is rightly refused (422). So every valid key gets a
  fresh suffix, as a conforming client's key would be fresh.
- `GET /api/orders/{id}?wait_ms=` long-polls up to 60 s, as documented, and the test's
  orders wait for a manual payment, so such a poll lasts its full wait: a valid wait above
  200 ms is sent as 200 ms, to keep the run within its time budget (and within
  schemathesis's 10 s request timeout).
"""

import re
import uuid

import schemathesis

# The same pattern and limit as the OpenAPI document's IdempotencyKey schema.
VALID_KEY = re.compile(r'(?:[!#-~][!-~]*|"[!-~]+")\Z')
MAX_KEY_LEN = 255
# The longest long poll the test sends (ms), and the documented maximum.
WAIT_SENT_MS = 200
MAX_WAIT_MS = 60_000


@schemathesis.hook
def before_call(context, case, kwargs):
    fresh_idempotency_key(case)
    shorter_long_poll(case)


def shorter_long_poll(case):
    wait = (case.query or {}).get("wait_ms")
    if isinstance(wait, int) and not isinstance(wait, bool) and WAIT_SENT_MS < wait <= MAX_WAIT_MS:
        case.query["wait_ms"] = WAIT_SENT_MS


def fresh_idempotency_key(case):
    headers = case.headers or {}
    name = next((h for h in headers if h.lower() == "idempotency-key"), None)
    key = headers.get(name) if name else None
    if not isinstance(key, str) or len(key) > MAX_KEY_LEN or not VALID_KEY.match(key):
        return
    fresh = uuid.uuid4().hex
    if key.startswith('"'):
        headers[name] = '"' + key[1:-1][: MAX_KEY_LEN - 2 - len(fresh)] + fresh + '"'
    else:
        headers[name] = key[: MAX_KEY_LEN - len(fresh)] + fresh
