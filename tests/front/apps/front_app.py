"""A tiny WSGI app for the front-door tests (tests/front).

Every request that reaches the app is appended, as one JSON line, to
$FRONT_STATE/hits.jsonl before the app does anything else: a test that must prove a
request never reached a worker looks for its tag there.

The action is the last path segment, so route prefixes can be put in front of it
(/slow/sleep, /fast/env):
- `` (/)        "ok"
- `env`         JSON of the environ keys the front door sets (REMOTE_ADDR, wsgi.url_scheme,
                weir.deadline, weir.request_id, HTTP_X_REQUEST_ID...) and the app's time.time()
- `sleep?s=`    sleeps s seconds (logs a second line, "end", when done)
- `echo`        reads the whole body, answers its length
- `stream?n=&size=&delay=`  n chunks of size bytes, delay seconds apart
- `status?code=` an app-made answer with that status
- `boom`        raises before start_response (weir answers 500 app-exception)
- `crash`       os._exit(3) mid-request (502 worker-died)
- anything else 404 (the app's own)

ready_check(): fails (returns False) while $FRONT_STATE/NOT_READY exists, raises while
$FRONT_STATE/RAISE exists, passes otherwise.
"""

import json
import os
import time
from urllib.parse import parse_qs

STATE = os.environ.get("FRONT_STATE", "")
_delay = float(os.environ.get("FRONT_IMPORT_DELAY", "0") or 0)
if _delay:
    time.sleep(_delay)


def _log(entry):
    if not STATE:
        return
    line = (json.dumps(entry) + "\n").encode()
    fd = os.open(os.path.join(STATE, "hits.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write on O_APPEND: lines of concurrent workers do not mix
    finally:
        os.close(fd)


def _qs(environ):
    return {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}


def _send(start_response, body, status="200 OK", ctype="text/plain"):
    if isinstance(body, str):
        body = body.encode()
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]


ENV_KEYS = ("REMOTE_ADDR", "REMOTE_PORT", "wsgi.url_scheme", "weir.deadline", "weir.request_id",
            "HTTP_X_REQUEST_ID", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "PATH_INFO",
            "QUERY_STRING", "CONTENT_LENGTH", "REQUEST_METHOD")


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    action = path.rsplit("/", 1)[-1]
    q = _qs(environ)
    _log({"event": "start", "path": path, "action": action, "tag": q.get("tag"), "pid": os.getpid(),
          "t": time.time()})
    if action == "":
        return _send(start_response, "ok")
    if action == "env":
        env = {k: environ[k] for k in ENV_KEYS if k in environ}
        env["now"] = time.time()
        return _send(start_response, json.dumps(env), ctype="application/json")
    if action == "sleep":
        time.sleep(float(q.get("s", "1")))
        _log({"event": "end", "path": path, "tag": q.get("tag"), "pid": os.getpid(), "t": time.time()})
        return _send(start_response, "slept %s" % q.get("s", "1"))
    if action == "echo":
        n = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(n) if n else environ["wsgi.input"].read()
        return _send(start_response, str(len(data)))
    if action == "stream":
        n, size, delay = int(q.get("n", "10")), int(q.get("size", "1000")), float(q.get("delay", "0.1"))
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def gen():
            for _ in range(n):
                yield b"x" * size
                time.sleep(delay)
        return gen()
    if action == "status":
        code = int(q.get("code", "404"))
        return _send(start_response, "app says %d" % code, "%d App Status" % code)
    if action == "boom":
        raise RuntimeError("front-app-boom")
    if action == "crash":
        os._exit(3)
    return _send(start_response, "not found", "404 Not Found")


def ready_check():
    if STATE and os.path.exists(os.path.join(STATE, "RAISE")):
        raise RuntimeError("database unreachable (front_app RAISE flag)")
    return not (STATE and os.path.exists(os.path.join(STATE, "NOT_READY")))
