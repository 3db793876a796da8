"""An app whose import fails: weir must exit non-zero with this error, not respawn forever."""

raise RuntimeError("e2e-import-failure-token: this app cannot be imported")


def application(environ, start_response):  # pragma: no cover - never reached
    start_response("200 OK", [])
    return [b""]
