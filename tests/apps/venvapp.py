"""Imports a module that only exists in the test's --virtualenv; answers with its location."""
import sys

import weir_venv_probe


def application(environ, start_response):
    body = ("%s\n%s" % (weir_venv_probe.__file__, sys.path[0])).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
