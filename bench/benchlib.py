"""What the side-by-side benchmarks' summaries share (bench/cache, bench/static,
bench/compression): the files a run leaves in its output directory, read back."""

import json
import os
import subprocess


def read_words(out: str, name: str) -> list:
    """The first three words of OUT/NAME (a load average), or ["?"]."""
    try:
        with open(os.path.join(out, name)) as f:
            return f.read().split()[:3]
    except OSError:
        return ["?"]


def first_line(cmdv: list) -> str:
    """The first line a command prints (a version), or "?"."""
    try:
        p = subprocess.run(cmdv, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except Exception:  # noqa: BLE001 - any failure: unknown
        return "?"


def weir_build(out: str) -> tuple:
    """(HEAD, dirty) of the weir binary the run used, from OUT/weir-build (bench/weir-bin.sh)."""
    head, dirty = "?", False
    with open(os.path.join(out, "weir-build")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition(" ")
            if k == "HEAD":
                head = v
            dirty = dirty or k == "dirty"
    return head, dirty


def access_lines(path: str):
    """Each line of an access log: a dict for weir's JSON lines, the list of words for
    nginx's (the benchmark's own log_format); nothing for a missing file, a blank or a
    broken line."""
    try:
        f = open(path)
    except OSError:
        return
    with f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            if line.startswith("{"):
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
            else:
                yield line.split()
