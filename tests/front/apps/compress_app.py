"""A WSGI app for tests/front/test_compression.py: answers of every shape the compression
stage must compress or leave alone. Plain WSGI (no Flask) so each header is exactly what
the test asks for.

GET /text?n=N&type=T&etag=E&cc=C   N bytes of repetitive text (type T, default text/plain;
                                    charset=utf-8), an ETag and a Cache-Control when given
GET /encoded                        a gzip body with Content-Encoding: gzip already
GET /partial                        206 with a Content-Range
GET /stream?n=N&gap=S               N server-sent events, S seconds apart, no Content-Length
GET /items                          about 17 KB of JSON with an ETag (the cached route)
"""

import gzip
import json
import time
from urllib.parse import parse_qs

WORDS = b"weir compresses what the app sends, not what the cache stores. "


def text(n):
    return (WORDS * (n // len(WORDS) + 1))[:n]


ITEMS = json.dumps(
    {"items": [{"id": i, "name": "item %d" % i, "price": i * 3 % 100, "tags": ["a", "b"]} for i in range(300)]}
).encode()


def application(environ, start_response):
    path = environ.get("PATH_INFO", "/")
    q = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path == "/":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]
    if path == "/text":
        body = text(int(q.get("n", "5000")))
        headers = [("Content-Type", q.get("type", "text/plain; charset=utf-8")), ("Content-Length", str(len(body)))]
        if "etag" in q:
            headers.append(("ETag", '"%s"' % q["etag"]))
        if "cc" in q:
            headers.append(("Cache-Control", q["cc"]))
        start_response("200 OK", headers)
        return [body]
    if path == "/encoded":
        body = gzip.compress(text(5000))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Encoding", "gzip"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/partial":
        body = text(5000)[:4000]
        start_response("206 Partial Content", [("Content-Type", "text/plain"), ("Content-Range", "bytes 0-3999/5000"),
                                               ("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        n, gap = int(q.get("n", "3")), float(q.get("gap", "0.5"))
        start_response("200 OK", [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache")])

        def events():
            for i in range(n):
                if i:
                    time.sleep(gap)
                yield ("data: event %d %s\n\n" % (i, "x" * 40)).encode()
        return events()
    if path == "/items":
        start_response("200 OK", [("Content-Type", "application/json"), ("ETag", '"items-1"'),
                                  ("Content-Length", str(len(ITEMS)))])
        return [ITEMS]
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"not found"]
