# Startup helpers of a weir worker (loaded from Rust as module `_weir_boot`).
import importlib
import json
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


class ErrorMapError(Exception):
    """An [[error_map]] entry whose class cannot be used; the message names its key."""


def _class_path(path):
    """(module, attribute path) candidates for a class path, longest module first."""
    parts = path.split(".")
    if len(parts) == 1:
        return [("builtins", parts)]
    return [(".".join(parts[:i]), parts[i:]) for i in range(len(parts) - 1, 0, -1)]


def _getattrs(obj, names):
    for n in names:
        obj = getattr(obj, n)
    return obj


def _check_class(key, path, obj):
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        raise ErrorMapError("%s.exception: %s is %s, not an exception class"
                            % (key, path, type(obj).__name__))
    return obj


def resolve_class(key, path):
    """Imports an entry's class path (package.module.Class; the longest importable module,
    then attributes) or raises ErrorMapError naming the key."""
    first_error = None
    for module, attrs in _class_path(path):
        try:
            mod = importlib.import_module(module)
        except ImportError as e:
            missing = getattr(e, "name", None)
            if missing and (module == missing or module.startswith(missing + ".")):
                # `a.b.C`: there is no module a.b.C (or a.b); try a shorter one.
                if first_error is None:
                    first_error = e
                continue
            # The module exists but its own import failed.
            raise ErrorMapError("%s.exception: importing %s (for %s) raised %s: %s"
                                % (key, module, path, type(e).__name__, e)) from e
        except Exception as e:  # noqa: BLE001 - the module raised while importing
            raise ErrorMapError("%s.exception: importing %s (for %s) raised %s: %s"
                                % (key, module, path, type(e).__name__, e)) from e
        try:
            obj = _getattrs(mod, attrs)
        except AttributeError:
            raise ErrorMapError("%s.exception: module %s has no %s (for %s)"
                                % (key, module, ".".join(attrs), path)) from None
        return _check_class(key, path, obj)
    raise ErrorMapError("%s.exception: cannot import %s: %s"
                        % (key, path, first_error or "no such module"))


def _preset_class(path):
    """A preset's class, only if its module is already imported (never imports)."""
    for module, attrs in _class_path(path):
        mod = sys.modules.get(module)
        if mod is not None:
            try:
                obj = _getattrs(mod, attrs)
            except AttributeError:
                return None
            if isinstance(obj, type) and issubclass(obj, BaseException):
                return obj
            return None
    return None


def _is_code(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _codes(exc):
    """The error codes of an exception: args[0] (PyMySQL, mysqlclient) and errno."""
    out = []
    args = getattr(exc, "args", None)
    if isinstance(args, tuple) and args and _is_code(args[0]):
        out.append(args[0])
    errno = getattr(exc, "errno", None)
    if _is_code(errno):
        out.append(errno)
    return out


class ErrorMap:
    """[[error_map]] and [errors]' presets, in order; the first entry that matches wins.

    Entries come as JSON from the master (weir-config's MappedError). An entry's class is
    imported here, at worker start (ErrorMapError if it cannot be); a preset's class is
    looked up among the modules the app imported, when an exception needs it."""

    def __init__(self, spec_json):
        self.entries = []
        for e in json.loads(spec_json):
            cls = None if e["preset"] else resolve_class(e["key"], e["exception"])
            ra = e.get("retry_after")
            self.entries.append([cls, e["exception"], frozenset(e["codes"]), e["preset"],
                                 (int(e["status"]), str(e["class"]),
                                  None if ra is None else int(ra), str(e["key"]))])

    def match(self, exc):
        """(status, class, retry_after or None, key) of the first entry matching exc."""
        codes = None
        for entry in self.entries:
            cls = entry[0]
            if cls is None:
                cls = _preset_class(entry[1])
                if cls is None:
                    continue
                entry[0] = cls
            if not isinstance(exc, cls):
                continue
            if entry[2]:
                if codes is None:
                    codes = _codes(exc)
                if not any(c in entry[2] for c in codes):
                    continue
            return entry[4]
        return None
