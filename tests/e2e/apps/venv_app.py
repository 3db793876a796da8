"""An app that imports a module found only in a virtualenv's site-packages (--virtualenv)."""

import sys

import e2e_venv_dep  # lives only in the test's virtualenv


def application(environ, start_response):
    body = ("%s %s" % (e2e_venv_dep.VALUE, sys.prefix)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
