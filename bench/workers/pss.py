"""Memory of a process, or of a process and all its descendants, from /proc.

    python3 pss.py tree PID    PID and every descendant (weir's zygote and workers, uWSGI's
                               workers, nginx's workers): one JSON object
    python3 pss.py only PID    PID alone (weir's master)

The object: {"pids": [...], "count": N, "rss_kib": sum, "pss_kib": sum, "uss_kib": sum,
"anon_kib": sum, "procs": [{"pid", "ppid", "role", "rss_kib", "pss_kib", ...}]}, from
/proc/PID/smaps_rollup (Rss, Pss, Private_Clean + Private_Dirty, Anonymous). A process
that exits meanwhile is left out. Used by bench/workers/run.sh and bench/conns/run.sh.
"""

import json
import os
import sys


def parents() -> dict:
    """pid -> ppid of every process now."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    st = f.read()
                out[int(d)] = int(st.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return out


def descendants(pid: int) -> list:
    """PID then every descendant, breadth first."""
    pp = parents()
    kids = {}
    for p, q in pp.items():
        kids.setdefault(q, []).append(p)
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(sorted(kids.get(p, [])))
    return out


def rollup(pid: int) -> dict:
    r = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            p = line.split()
            if len(p) >= 3 and p[0].endswith(":"):
                r[p[0][:-1]] = int(p[1])
    return r


def role(pid: int, top: int) -> str:
    if pid == top:
        return "master"
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "?"
    return "zygote" if b"--zygote" in argv and _is_zygote(pid, top) else "worker"


def _is_zygote(pid: int, top: int) -> bool:
    # weir's zygote is the master's child; the workers forked from it keep its command line
    # (`weir worker --zygote ...`) but are its children, not the master's.
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[1]) == top
    except (OSError, ValueError):
        return False


def measure(pids: list, top: int) -> dict:
    procs = []
    for p in pids:
        try:
            r = rollup(p)
        except OSError:
            continue
        procs.append({
            "pid": p,
            "role": role(p, top),
            "rss_kib": r.get("Rss", 0),
            "pss_kib": r.get("Pss", 0),
            "uss_kib": r.get("Private_Clean", 0) + r.get("Private_Dirty", 0),
            "anon_kib": r.get("Anonymous", 0),
        })
    tot = {k: sum(x[k] for x in procs) for k in ("rss_kib", "pss_kib", "uss_kib", "anon_kib")}
    return dict(pids=[x["pid"] for x in procs], count=len(procs), procs=procs, **tot)


def main() -> int:
    if len(sys.argv) != 3 or sys.argv[1] not in ("tree", "only"):
        print(__doc__, file=sys.stderr)
        return 2
    pid = int(sys.argv[2])
    pids = descendants(pid) if sys.argv[1] == "tree" else [pid]
    print(json.dumps(measure(pids, pid)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
