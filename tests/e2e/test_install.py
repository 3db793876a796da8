"""Installing weir the way Python people install servers (docs/install.md): a wheel built by
maturin from pyproject.toml, and `pip install .`, each into a fresh virtualenv, give the
venv a `weir` command that serves examples/shop with the Flask installed in that venv, with
no flag naming the venv and without activating it.

Both builds use maturin's dev profile and the target directory the test binary was built
in ($WEIR_BIN is <target>/debug/weir; scripts/test.sh builds it first), with the same
PyO3 configuration (scripts/python-link.sh), so cargo has nothing to compile: what the
test costs is packing the wheel and pip. Flask comes from PyPI (or pip's cache).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from shlex import quote

import pytest

from e2e_lib import REPO, Addr, Proc, free_port, get, wait_for

SHOP = REPO / "examples" / "shop"
PY_TAG = "cp%d%d" % sys.version_info[:2]
BUILD_TIMEOUT = 1800  # seconds; only reached when cargo must really build

# A stdlib-only app that says which Python runs it.
PROBE_APP = '''
import json, sys

def application(environ, start_response):
    try:
        import flask
        flask_file = flask.__file__
    except ImportError:
        flask_file = None
    body = json.dumps({"prefix": sys.prefix, "executable": sys.executable, "flask": flask_file}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
'''

pytestmark = pytest.mark.skipif(subprocess.run([sys.executable, "-c", "import maturin"],
                                               capture_output=True).returncode != 0,
                                reason="maturin is not installed (scripts/install-deps.sh installs it)")


def target_dir(weir_bin: Path) -> Path:
    """The cargo target directory $WEIR_BIN was built in (<target>/debug/weir)."""
    p = weir_bin.resolve()
    if p.parent.name != "debug":
        pytest.skip("WEIR_BIN %s is not <target>/debug/weir: the wheel would need a build of its own" % p)
    return p.parent.parent


def build_env(weir_bin: Path, **extra) -> dict:
    env = dict(os.environ)
    env["CARGO_TARGET_DIR"] = str(target_dir(weir_bin))
    env.update(extra)
    return env


def run(argv, env=None, timeout=600, cwd=None) -> str:
    p = subprocess.run([str(a) for a in argv], capture_output=True, env=env, timeout=timeout, cwd=cwd,
                       stdin=subprocess.DEVNULL)
    out = (p.stdout + p.stderr).decode("utf-8", "replace")
    assert p.returncode == 0, "%s exited %d:\n%s" % (" ".join(map(str, argv)), p.returncode, out[-6000:])
    return out


def sourced(cmd: str) -> list:
    """cmd in bash after `source scripts/python-link.sh`, as scripts/test.sh builds."""
    return ["bash", "-c", "source scripts/python-link.sh && " + cmd]


def fresh_venv(path: Path) -> Path:
    run([sys.executable, "-m", "venv", path], timeout=120)
    return path


def serve(venv: Path, app: str, chdir: Path, logdir: Path, env=None, ready_path="/"):
    """`<venv>/bin/weir serve`, with PATH and VIRTUAL_ENV as if the venv were not activated."""
    port = free_port()
    full = {"PATH": os.defpath, "VIRTUAL_ENV": ""}
    full.update(env or {})
    proc = Proc("weir-venv", [venv / "bin" / "weir", "serve", "--app", app, "--chdir", chdir, "--workers", "2",
                              "--listen", "127.0.0.1:%d" % port], logdir, cwd=logdir, env=full)
    addr = Addr("127.0.0.1", port)

    def ready():
        if not proc.alive:
            pytest.fail("weir exited (status %s) before it answered\n%s" % (proc.returncode, proc.describe()),
                        pytrace=False)
        return get(addr, ready_path, timeout=5).status == 200

    try:
        wait_for(ready, 60, what="GET %s on %s" % (ready_path, addr))
    except BaseException:
        proc.stop()
        raise
    return proc, addr


def probe(venv: Path, tmp_path: Path) -> dict:
    (tmp_path / "probe.py").write_text(PROBE_APP)
    proc, addr = serve(venv, "probe:application", tmp_path, tmp_path / "logs")
    try:
        r = get(addr, "/")
        assert r.status == 200, r
        return r.json()
    finally:
        proc.stop()


@pytest.mark.e2e_timeout(BUILD_TIMEOUT + 300)
def test_wheel_into_a_fresh_venv_serves_the_shop(weir_bin, tmp_path):
    wheels = tmp_path / "wheels"
    cmd = "exec %s -m maturin build --profile dev --out %s" % (quote(sys.executable), quote(str(wheels)))
    out = run(sourced(cmd), env=build_env(weir_bin), cwd=REPO, timeout=BUILD_TIMEOUT)
    built = sorted(wheels.glob("weir-*.whl"))
    assert len(built) == 1, out
    # Tagged for the interpreter it embeds, and manylinux: libpython linked in statically
    # leaves only glibc, libm and libgcc_s (docs/install.md says which manylinux and why).
    assert re.fullmatch(r"weir-[0-9.]+-%s-%s-manylinux_2_\d+_x86_64\.whl" % (PY_TAG, PY_TAG), built[0].name), \
        built[0].name

    venv = fresh_venv(tmp_path / "venv")
    run([venv / "bin" / "pip", "install", "-q", built[0], "flask>=3,<4"], timeout=600)
    assert run([venv / "bin" / "weir", "--version"]).startswith("weir ")

    # The venv's interpreter: sys.prefix, sys.executable and Flask are the venv's, though
    # nothing named the venv (weir found it from where it is installed).
    seen = probe(venv, tmp_path)
    assert Path(seen["prefix"]).resolve() == venv.resolve(), seen
    assert Path(seen["executable"]).parent.resolve() == (venv / "bin").resolve(), seen
    assert seen["flask"] and Path(seen["flask"]).resolve().is_relative_to(venv.resolve()), seen

    shop, addr = serve(venv, "app:app", SHOP, tmp_path / "logs", ready_path="/hello",
                       env={"SHOP_SQLITE_PATH": str(tmp_path / "shop.db"), "DATABASE_URL": ""})
    try:
        r = get(addr, "/hello")
        assert r.status == 200 and r.body.startswith(b"Hello"), r
        r = get(addr, "/items", timeout=60)
        assert r.status == 200 and len(r.json()["items"]) == 80, r
    finally:
        shop.stop()
    assert re.search(r"serving on .* virtualenv=%s\s" % re.escape(str(venv)), shop.output()), shop.describe()


@pytest.mark.e2e_timeout(BUILD_TIMEOUT + 300)
def test_pip_install_dot_into_a_fresh_venv(weir_bin, tmp_path):
    venv = fresh_venv(tmp_path / "venv")
    # pip builds through maturin's PEP 517 backend (maturin from PyPI into an isolated build
    # environment); MATURIN_PEP517_ARGS picks the dev profile, as the test binary's.
    env = build_env(weir_bin, MATURIN_PEP517_ARGS="--profile dev")
    cmd = "exec %s -m pip install -q %s" % (quote(str(venv / "bin" / "python3")), quote(str(REPO)))
    run(sourced(cmd), env=env, cwd=REPO, timeout=BUILD_TIMEOUT)
    assert run([venv / "bin" / "weir", "--version"]).startswith("weir ")
    seen = probe(venv, tmp_path)
    assert Path(seen["prefix"]).resolve() == venv.resolve(), seen
    assert seen["flask"] is None, "Flask is not in this venv, yet the app imported %s" % seen["flask"]
