"""One weir life for bench/workers/run.sh: start, memory, reload under load, memory again.

    python3 weir_cycle.py WEIR_BIN WORKERS PORT RUN_DIR OUT_JSON

1. Starts `WEIR_BIN serve --app app:app --chdir SHOP_DIR --workers N --listen
   127.0.0.1:PORT --access-log off` in its own session with NOTIFY_SOCKET set to a datagram
   socket of ours (weir's sd_notify support, docs/deploy.md): the time from the exec to
   `READY=1` is the start time (every worker of the first generation has imported the app,
   or been forked from the zygote, and said ready).
2. One GET /hello (as the uWSGI side's readiness check), SETTLE s idle, the total PSS of the
   master and every descendant (bench/workers/pss.py): "fresh". Then a few requests (`wrk
   -t2 -c2N -d1s` on /hello and on /items), SETTLE s idle, the total PSS again: "idle".
3. `weir load --rate RELOAD_RATE --duration LOAD_S` on /hello; RELOAD_AT s into it, SIGHUP:
   the time from the signal to the next `READY=1` (the new generation took over) is the
   reload time. The load's statuses and errors are the failures across the reload.
4. Once the old generation has left (the tree is back to master + zygote + N, bounded),
   SETTLE s, the total PSS again.
Writes one JSON object to OUT_JSON. Everything is bounded; the whole session is killed at
the end, whatever happens. Environment: SHOP_DIR, SETTLE (2), RELOAD_RATE (500), LOAD_S
(12), RELOAD_AT (3), READY_TIMEOUT (60).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pss  # noqa: E402

BIN, N, PORT, RUN_DIR, OUT_JSON = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
SHOP_DIR = os.environ["SHOP_DIR"]
SETTLE = float(os.environ.get("SETTLE", "2"))
RATE = int(os.environ.get("RELOAD_RATE", "500"))
LOAD_S = float(os.environ.get("LOAD_S", "12"))
RELOAD_AT = float(os.environ.get("RELOAD_AT", "3"))
READY_TIMEOUT = float(os.environ.get("READY_TIMEOUT", "60"))
URL = "http://127.0.0.1:%d" % PORT

result = {"workers": N, "errors": []}
notes = []  # (monotonic time, message)
cond = threading.Condition()


def listen(sock):
    while True:
        try:
            data = sock.recv(4096)
        except OSError:
            return
        with cond:
            notes.append((time.monotonic(), data.decode("utf-8", "replace")))
            cond.notify_all()


def wait_ready(after: int, deadline: float):
    """The time of the first READY=1 among notes[after:], or None by the deadline."""
    with cond:
        while True:
            for t, msg in notes[after:]:
                if "READY=1" in msg.split("\n"):
                    return t
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                return None
            cond.wait(min(left, 0.2))


def tree_roles():
    m = pss.measure(pss.descendants(proc.pid), proc.pid)
    roles = [p["role"] for p in m["procs"]]
    return m, roles.count("worker"), roles.count("zygote")


def measure(tag):
    m, workers, zygotes = tree_roles()
    result[tag] = {"pss_kib": m["pss_kib"], "rss_kib": m["rss_kib"], "uss_kib": m["uss_kib"],
                   "processes": m["count"], "workers": workers, "zygotes": zygotes,
                   "by_role_pss_kib": {r: sum(p["pss_kib"] for p in m["procs"] if p["role"] == r)
                                       for r in ("master", "zygote", "worker")}}


sock_path = os.path.join(RUN_DIR, "notify-%d.sock" % os.getpid())
nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
nsock.bind(sock_path)
threading.Thread(target=listen, args=(nsock,), daemon=True).start()
env = dict(os.environ, NOTIFY_SOCKET=sock_path, RUST_LOG=os.environ.get("RUST_LOG", "info"))
log = open(os.path.join(os.path.dirname(OUT_JSON), os.path.basename(OUT_JSON)[:-5] + ".log"), "w")
t0 = time.monotonic()
proc = subprocess.Popen([BIN, "serve", "--app", "app:app", "--chdir", SHOP_DIR, "--workers", str(N),
                         "--listen", "127.0.0.1:%d" % PORT, "--access-log", "off"],
                        env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        start_new_session=True)
load = None
try:
    t_ready = wait_ready(0, t0 + READY_TIMEOUT)
    if t_ready is None:
        raise SystemExit("weir did not send READY=1 within %gs (see %s)" % (READY_TIMEOUT, log.name))
    result["start_to_ready_s"] = t_ready - t0
    _m, w, z = tree_roles()
    result["at_ready"] = {"workers": w, "zygotes": z}
    urllib.request.urlopen(URL + "/hello", timeout=30).read()
    time.sleep(SETTLE)
    measure("fresh")
    for path in ("/hello", "/items"):
        subprocess.run(["wrk", "-t2", "-c%d" % (2 * N), "-d1s", URL + path], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=30, check=False)
    time.sleep(SETTLE)
    measure("idle")

    load_json = OUT_JSON[:-5] + ".reload-load.json"
    load = subprocess.Popen([BIN, "load", "--rate", str(RATE), "--duration", "%gs" % LOAD_S,
                             "--timeout", "5s", "-q", "--json", load_json, URL + "/hello"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    time.sleep(RELOAD_AT)
    with cond:
        mark = len(notes)
    t_hup = time.monotonic()
    os.kill(proc.pid, signal.SIGHUP)
    t_rel = wait_ready(mark, t_hup + READY_TIMEOUT)
    result["sighup_to_ready_s"] = None if t_rel is None else t_rel - t_hup
    if t_rel is not None and t_rel - t_hup > LOAD_S - RELOAD_AT:
        result["errors"].append("the reload outlasted the load")
    out, _ = load.communicate(timeout=LOAD_S + 60)
    result["load_report"] = out.decode("utf-8", "replace").strip()
    try:
        with open(load_json) as f:
            j = json.load(f)
        result["reload_load"] = {"rate": j["manifest"]["rate"], "requests": j["requests"],
                                 "status": j["status"], "errors": j["errors"],
                                 "errors_by_kind": j["errors_by_kind"], "p99_ms": j["latency_ms"]["p99"],
                                 "max_ms": j["latency_ms"]["max"], "valid": j["generator"]["valid"]}
    except (OSError, ValueError, KeyError) as e:
        result["errors"].append("no weir load result: %s" % e)
    # the old generation leaves once its workers have finished; then the memory again
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _m, w, z = tree_roles()
        if w == N and z <= 1:
            break
        time.sleep(0.2)
    time.sleep(SETTLE)
    measure("after_reload")
    result["notify"] = [[round(t - t0, 4), m.replace("\n", " ")] for t, m in notes]
finally:
    if load is not None and load.poll() is None:
        os.killpg(load.pid, signal.SIGKILL)
        load.wait()
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    nsock.close()
    os.unlink(sock_path)
    with open(OUT_JSON, "w") as f:
        json.dump(result, f, indent=1)
