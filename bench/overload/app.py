"""The overload benchmark's app (bench/overload/run.sh), served by weir and by uWSGI alike:
/work?ms=N holds its worker's CPU for N milliseconds (a busy loop, as rendering or
serialization does), /hello answers at once."""

import time


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/work":
        ms = 20.0
        for part in environ.get("QUERY_STRING", "").split("&"):
            if part.startswith("ms="):
                ms = float(part[3:])
        end = time.monotonic() + ms / 1000.0
        n = 0
        while time.monotonic() < end:
            n += 1
        body = b"worked %d\n" % n
    elif path == "/hello":
        body = b"hello\n"
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
