"""`weir import` (issue 17) end to end: the paper's NGINX and uWSGI configurations
(crates/weir-import/tests/fixtures, after the paper's Sections III and IV) and a
gunicorn.conf.py become a weir.toml that `weir serve --check` accepts; the table lists every
directive with a verdict; bad input exits 2 naming file and line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from test_cli_config import run_weir  # the e2e suite's "run weir to completion" helper

pytestmark = pytest.mark.e2e_timeout(60)

FIXTURES = Path(__file__).resolve().parents[2] / "crates" / "weir-import" / "tests" / "fixtures"
ROW = re.compile(r"^(\S+):(\d+)\s+(.+?)\s{2,}(mapped|not needed|not supported)\s{2,}(.+)$")


def rows(out):
    return [m.groups() for m in map(ROW.match, out.splitlines()) if m]


def directives(path):
    """Every directive of an NGINX file, by line (name only): a rough count for the check."""
    n = 0
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        n += line.count(";") + line.count("{")
    return n


def test_the_papers_nginx_and_uwsgi_import_and_check(weir_bin, tmp_path):
    out_toml = tmp_path / "weir.toml"
    code, out = run_weir(weir_bin, ["import", "--nginx", FIXTURES / "paper-nginx.conf",
                                    "--uwsgi", FIXTURES / "paper-uwsgi.ini", "-o", out_toml])
    assert code == 0, out
    got = rows(out)
    nginx_rows = [r for r in got if r[0].endswith("paper-nginx.conf")]
    ini_rows = [r for r in got if r[0].endswith("paper-uwsgi.ini")]
    assert len(nginx_rows) == directives(FIXTURES / "paper-nginx.conf"), out
    ini_keys = [l for l in (FIXTURES / "paper-uwsgi.ini").read_text().splitlines()
                if l.strip() and not l.startswith((";", "#", "["))]
    assert len(ini_rows) == len(ini_keys), out
    verdicts = {r[2].split(" ")[0]: (r[3], r[4]) for r in got}
    assert verdicts["limit_req_zone"] == ("mapped", verdicts["limit_req_zone"][1])
    assert verdicts["limit_req_zone"][1].startswith("limit_req.mylimit")
    assert verdicts["uwsgi_buffers"][0] == "not needed"
    assert verdicts["uwsgi_cache"][1].startswith("route[0].cache")
    assert verdicts["harakiri"][1] == "app.harakiri"
    assert verdicts["processes"][1] == "app.workers"
    assert re.search(r"\d+ directives: \d+ mapped, \d+ not needed, \d+ not supported", out)
    text = out_toml.read_text()
    assert 'module = "app:app"' in text and "workers = 10" in text, text
    assert "[upstream]" not in text
    code, out = run_weir(weir_bin, ["serve", "--check", "--config", out_toml])
    assert code == 0, out + text


def test_nginx_alone_fronts_the_existing_uwsgi(weir_bin, tmp_path):
    out_toml = tmp_path / "weir.toml"
    code, out = run_weir(weir_bin, ["import", "--nginx", FIXTURES / "paper-nginx.conf", "-o", out_toml])
    assert code == 0, out
    text = out_toml.read_text()
    assert "[upstream]" in text and 'servers = ["unix:/run/uwsgi/shop.sock"]' in text, text
    code, out = run_weir(weir_bin, ["serve", "--check", "--config", out_toml])
    assert code == 0, out + text


def test_full_fixture_with_includes_statics_and_unsupported(weir_bin, tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "fx")
    out_toml = tmp_path / "weir.toml"
    code, out = run_weir(weir_bin, ["import", "--nginx", tmp_path / "fx" / "full-nginx.conf", "-o", out_toml])
    assert code == 0, out
    got = rows(out)
    assert any(r[0].endswith("conf.d/timeouts.conf") for r in got), out
    assert any(r[3] == "not supported" and r[2].startswith("location ~") for r in got), out
    assert "[[static]]" in out_toml.read_text()
    code, out2 = run_weir(weir_bin, ["serve", "--check", "--config", out_toml])
    assert code == 0, out2 + out_toml.read_text()


@pytest.mark.skipif(shutil.which("python3") is None, reason="needs python3")
def test_gunicorn_conf_py(weir_bin, tmp_path):
    out_toml = tmp_path / "weir.toml"
    shop = Path(__file__).resolve().parents[2] / "examples" / "shop"
    code, out = run_weir(weir_bin, ["import", "--nginx", FIXTURES / "paper-nginx.conf",
                                    "--gunicorn", FIXTURES / "gunicorn.conf.py", "-o", out_toml])
    assert code == 0, out
    verdicts = {r[2].split(" ")[0]: (r[3], r[4]) for r in rows(out)}
    assert verdicts["timeout"][1].startswith("app.harakiri")
    assert verdicts["post_fork"][0] == "not supported"
    assert verdicts["bind"][0] == "not needed"
    text = out_toml.read_text() + '\n'
    # gunicorn's chdir is where it was started: point it at the shop for the check.
    text = text.replace("[app]\n", '[app]\nchdir = "%s"\n' % shop, 1)
    out_toml.write_text(text)
    code, out = run_weir(weir_bin, ["serve", "--check", "--config", out_toml])
    assert code == 0, out + text


def test_without_output_the_toml_goes_to_stdout(weir_bin):
    p = subprocess.run([str(weir_bin), "import", "--uwsgi", str(FIXTURES / "paper-uwsgi.ini")],
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert b'module = "app:app"' in p.stdout
    assert b"app.workers" in p.stderr and b"app.workers" not in p.stdout


@pytest.mark.parametrize("name,text,line,what", [
    ("unterminated.conf", "http {\n  server {\n    listen 80\n  }\n}\n", 4, "not terminated"),
    ("brace.conf", "events { }\n}\n", 2, 'unexpected "}"'),
    ("eof.conf", "http {\n  server {\n", 2, "end of file"),
])
def test_bad_nginx_exits_2_naming_file_and_line(weir_bin, tmp_path, name, text, line, what):
    p = tmp_path / name
    p.write_text(text)
    code, out = run_weir(weir_bin, ["import", "--nginx", p, "-o", tmp_path / "o.toml"])
    assert code == 2, out
    assert "%s:%d: " % (p, line) in out and what in out, out
    assert not (tmp_path / "o.toml").exists()


def test_bad_ini_and_missing_files_exit_2(weir_bin, tmp_path):
    ini = tmp_path / "u.ini"
    ini.write_text("[uwsgi]\nmodule = app:app\n[broken\n")
    code, out = run_weir(weir_bin, ["import", "--uwsgi", ini])
    assert code == 2 and "%s:3: " % ini in out, out
    code, out = run_weir(weir_bin, ["import", "--nginx", tmp_path / "nope.conf"])
    assert code == 2 and "nope.conf" in out, out
    code, out = run_weir(weir_bin, ["import", "--gunicorn", tmp_path / "nope.py"])
    assert code == 2 and "nope.py" in out, out
    code, out = run_weir(weir_bin, ["import"])
    assert code == 2, out


def test_help_has_an_example(weir_bin):
    code, out = run_weir(weir_bin, ["import", "--help"])
    assert code == 0
    assert "weir import --nginx" in out and "--uwsgi" in out and "--gunicorn" in out



def test_a_result_check_would_refuse_here_is_written_with_a_warning(weir_bin, tmp_path):
    ini = tmp_path / "u.ini"
    ini.write_text("[uwsgi]\nmodule = app:app\nchdir = %s\nprocesses = 3\n" % (tmp_path / "missing"))
    out_toml = tmp_path / "weir.toml"
    code, out = run_weir(weir_bin, ["import", "--uwsgi", ini, "-o", out_toml])
    assert code == 0 and out_toml.exists(), out
    assert "warning" in out and "app.chdir" in out, out
