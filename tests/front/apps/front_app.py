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
- `cached?...`  an answer for the cache tests (tests/front/test_cache.py), shaped by its
                query: cc= (Cache-Control), etag= (ETag, and 304 to a matching
                If-None-Match), lm= (Last-Modified), vary=, skey= (Surrogate-Key), cookie=1
                (Set-Cookie), code=, size= (body padded to size bytes), chunks= (streamed in
                that many chunks), sleep=. Its body is JSON with a fresh `t` (time.time()) and
                the request's Accept-Encoding. While $FRONT_STATE/CACHE_FAIL exists, it fails
                as that file says: `boom` (raise), `crash` (os._exit), `status503` (an app
                503), `sleep5` (sleep 5 s first).
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
            "QUERY_STRING", "CONTENT_LENGTH", "REQUEST_METHOD", "HTTPS", "SERVER_PROTOCOL", "HTTP_HOST",
            "SERVER_NAME", "SERVER_PORT")


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
    if action == "work":
        # CPU work of ms milliseconds (a busy loop: the worker holds the CPU, as a real
        # endpoint's rendering or serialization does)
        end = time.monotonic() + float(q.get("ms", "20")) / 1000.0
        n = 0
        while time.monotonic() < end:
            n += 1
        return _send(start_response, "worked %d" % n)
    if action == "echo":
        n = int(environ.get("CONTENT_LENGTH") or 0)
        data = environ["wsgi.input"].read(n) if n else environ["wsgi.input"].read()
        return _send(start_response, str(len(data)))
    if action == "stream":
        n, size, delay = int(q.get("n", "10")), int(q.get("size", "1000")), float(q.get("delay", "0.1"))
        headers = [("Content-Type", "application/octet-stream")]
        if q.get("length") == "1":
            headers.append(("Content-Length", str(n * size)))
        start_response("200 OK", headers)

        def gen():
            for _ in range(n):
                yield b"x" * size
                time.sleep(delay)
        return gen()
    if action == "cached":
        return _cached(environ, start_response, q)
    if action == "status":
        code = int(q.get("code", "404"))
        return _send(start_response, "app says %d" % code, "%d App Status" % code)
    if action == "boom":
        raise RuntimeError("front-app-boom")
    if action == "crash":
        os._exit(3)
    return _send(start_response, "not found", "404 Not Found")


def _cached(environ, start_response, q):
    fail = ""
    if STATE and os.path.exists(os.path.join(STATE, "CACHE_FAIL")):
        with open(os.path.join(STATE, "CACHE_FAIL")) as f:
            fail = f.read().strip()
    if fail == "boom":
        raise RuntimeError("front-app cached boom")
    if fail == "crash":
        os._exit(3)
    if fail.startswith("status"):
        code = int(fail[len("status"):])
        return _send(start_response, "app fails with %d" % code, "%d Failing" % code)
    if fail.startswith("sleep"):
        time.sleep(float(fail[len("sleep"):]))
    if q.get("sleep"):
        time.sleep(float(q["sleep"]))
    headers = []
    for param, name in (("cc", "Cache-Control"), ("lm", "Last-Modified"), ("vary", "Vary"),
                        ("skey", "Surrogate-Key")):
        if q.get(param):
            headers.append((name, q[param]))
    etag = q.get("etag")
    if etag:
        headers.append(("ETag", '"%s"' % etag))
    if q.get("cookie"):
        headers.append(("Set-Cookie", "session=1"))
    inm = environ.get("HTTP_IF_NONE_MATCH", "")
    _log({"event": "cached", "path": environ.get("PATH_INFO"), "qs": environ.get("QUERY_STRING"),
          "inm": inm, "ims": environ.get("HTTP_IF_MODIFIED_SINCE", ""),
          "method": environ.get("REQUEST_METHOD"), "t": time.time()})
    if etag and '"%s"' % etag in inm:
        start_response("304 Not Modified", headers)
        return [b""]
    body = json.dumps({"t": time.time(), "pid": os.getpid(), "ae": environ.get("HTTP_ACCEPT_ENCODING", ""),
                       "qs": environ.get("QUERY_STRING", "")}).encode()
    size = int(q.get("size", "0"))
    if size > len(body):
        body += b" " * (size - len(body))
    code = int(q.get("code", "200"))
    chunks = int(q.get("chunks", "0"))
    if chunks:
        start_response("%d Cached" % code, [("Content-Type", "application/json")] + headers)
        step = max(1, len(body) // chunks)

        def gen():
            for i in range(0, len(body), step):
                yield body[i:i + step]
                time.sleep(0.01)
        return gen()
    start_response("%d Cached" % code, [("Content-Type", "application/json"),
                                        ("Content-Length", str(len(body)))] + headers)
    return [body]


def ready_check():
    if STATE and os.path.exists(os.path.join(STATE, "RAISE")):
        raise RuntimeError("database unreachable (front_app RAISE flag)")
    return not (STATE and os.path.exists(os.path.join(STATE, "NOT_READY")))
