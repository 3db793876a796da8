# Startup helpers of a weir worker (loaded from Rust as module `_weir_boot`).
import importlib
import os
import site
import sys
import traceback


def activate(venv):
    """Puts a virtualenv's site-packages (and its .pth entries) before the base ones."""
    venv = os.path.abspath(venv)
    sp = os.path.join(venv, "lib", "python%d.%d" % sys.version_info[:2], "site-packages")
    if not os.path.isdir(sp):
        raise FileNotFoundError("virtualenv %r has no %s" % (venv, sp))
    before = list(sys.path)
    site.addsitedir(sp)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before
    sys.prefix = sys.exec_prefix = venv
    os.environ["VIRTUAL_ENV"] = venv


def put_first(path):
    path = os.path.abspath(path)
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)


def load(spec, default):
    """Imports MODULE:ATTR (ATTR may be dotted) and returns the callable."""
    module, sep, attr = spec.partition(":")
    if not sep:
        if default is None:
            raise ValueError("expected MODULE:FUNCTION, got %r" % spec)
        attr = default
    if not module or not attr:
        raise ValueError("expected MODULE:CALLABLE, got %r" % spec)
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError("%s is not callable (it is %s)" % (spec, type(obj).__name__))
    return obj


def format_exc(etype, value, tb):
    return "".join(traceback.format_exception(etype, value, tb)).rstrip("\n")
