# Sourced by the project's scripts before they build weir: links CPython statically into
# the weir binary when the Python in use ships libpython3.X.a (pyenv, python.org and
# Debian builds do), as uWSGI's pip build and Debian's own python3 do. A shared libpython
# is built position-independent with semantic interposition: every call between its own
# functions goes through the PLT, and the workers run a Flask request about 13% slower
# (bench/RESULTS.md, "Static libpython"). PyO3 takes the choice from PYO3_CONFIG_FILE;
# crates/weir/build.rs adds --export-dynamic so C extension modules find the interpreter.
#
# WEIR_PYTHON_SHARED=1 keeps the shared library. Without libpython3.X.a nothing changes.
_weir_py=${PYO3_PYTHON:-$(command -v python3)}
if [[ "${WEIR_PYTHON_SHARED:-0}" != 1 && -z "${PYO3_CONFIG_FILE:-}" && -n "$_weir_py" ]]; then
  _weir_cfg="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target/pyo3-static.cfg"
  mkdir -p "$(dirname "$_weir_cfg")"
  if "$_weir_py" - "$_weir_cfg" <<'PY'
import os, sys, sysconfig
v = sysconfig.get_config_var
libpl, library = v("LIBPL"), v("LIBRARY")
if sys.implementation.name != "cpython" or not libpl or not library or not os.path.exists(os.path.join(libpl, library)):
    sys.exit(1)
text = "\n".join([
    "implementation=CPython",
    "version=%d.%d" % sys.version_info[:2],
    "shared=false",
    "abi3=false",
    "lib_name=" + library[3:-2],  # libpython3.11.a -> python3.11
    "lib_dir=" + libpl,
    "executable=" + sys.executable,
    "pointer_width=%d" % (64 if sys.maxsize > 2**32 else 32),
    "build_flags=" + ",".join(f for f in ("Py_DEBUG", "Py_REF_DEBUG", "Py_TRACE_REFS", "COUNT_ALLOCS") if v(f)),
    "suppress_build_script_link_lines=false",
]) + "\n"
path = sys.argv[1]
old = open(path).read() if os.path.exists(path) else None
if old != text:  # rewriting an unchanged file would not rebuild, but keep it quiet anyway
    open(path, "w").write(text)
PY
  then
    export PYO3_CONFIG_FILE="$_weir_cfg"
  fi
fi
unset _weir_py _weir_cfg
