"""Issue 12, the web UI: a token on every bind, artifacts only from inside the allowed roots, never a 500.

Another local user is `nobody` (CI runs as root): Debian's python3, run through setpriv, with the
stdlib only. Servers announce their URL on stdout; nothing waits on the clock.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import quote

import pytest

pytest.importorskip("starlette")

import anyio  # noqa: E402

import ml_persistence  # noqa: E402
from ml_persistence import ExperimentTracker  # noqa: E402

with warnings.catch_warnings():  # newer Starlette would rather have httpx2 than httpx (the test extra's)
    warnings.simplefilter("ignore")
    TestClient = pytest.importorskip("starlette.testclient").TestClient

from conftest import subprocess_env  # noqa: E402
from test_ui_server import PNG, build, fetch, ui_server  # noqa: E402
from ml_persistence.ui.server import create_app  # noqa: E402

TOKEN = "t" * 43
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SYSTEM_PYTHON = "/usr/bin/python3"


# -- a token on every bind ---------------------------------------------------------------------------------


def test_loopback_ui_needs_the_token(db_path: str, tmp_path: Path) -> None:
    built = build(db_path, tmp_path)
    png = f"/api/experiments/{built['a']}/artifacts/{built['artifacts']['png']}"
    with ui_server(db_path, cwd=tmp_path) as server:
        for path in ("/", "/api/experiments", f"/api/experiments/{built['a']}", png, "/static/app.js",
                     f"/api/experiments/{built['a']}/metric?name=loss", f"/api/compare?ids={built['a']}"):
            status, _, body = fetch(server.base + path)
            assert status == 401, (path, status)
            assert b"alpha-ppo" not in body and PNG not in body
            assert fetch(server.base + path, {"Authorization": "Bearer " + server.token[:-1]})[0] == 401
        # The browser's way: the printed URL sets a cookie and drops the token from the address bar.
        status, headers, _ = fetch(server.url)
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"].split(";", 1)[0]
        assert cookie.endswith("=" + server.token) and "HttpOnly" in headers["Set-Cookie"]
        assert fetch(server.base + "/", {"Cookie": cookie})[0] == 200
        assert fetch(server.base + png, {"Cookie": cookie})[2] == PNG
        server.stop()
        assert "--no-token" not in "".join(server.stderr)


def test_no_token_on_loopback_serves_everyone_with_a_warning(db_path: str, tmp_path: Path) -> None:
    build(db_path, tmp_path)
    with ui_server(db_path, "--no-token", cwd=tmp_path) as server:
        assert "token" not in server.url and server.url.startswith("http://127.0.0.1:")
        status, _, body = fetch(server.base + "/api/experiments")
        assert status == 200 and json.loads(body)["experiments"]
        server.stop()
        warning = "".join(server.stderr)
        assert "warning: --no-token: every user of this machine can read the runs" in warning, warning


def test_a_home_directory_root_is_warned_about(db_path: str, tmp_path: Path) -> None:
    build(db_path, tmp_path)
    with ui_server(db_path, "--artifact-root", os.path.expanduser("~"), cwd=tmp_path) as server:
        assert fetch(server.base + "/")[0] == 401  # serving: everything it says at start is said
        server.stop()
    warning = "".join(server.stderr)
    assert "is an artifact root, so any file under it can be served" in warning, warning


def _pump(stream: Any, sink: Any) -> None:
    for line in stream:
        sink(line)


def test_open_hands_the_browser_a_private_page_not_the_token(db_path: str, tmp_path: Path) -> None:
    """A browser's command line is readable by every local user: --open gives it a 0600 file forwarding to the URL."""
    build(db_path, tmp_path)
    browser = tmp_path / "browser"  # what $BROWSER names is started with the URL: this one prints it
    browser.write_text(f"#!{sys.executable}\nimport sys\nprint('opened', sys.argv[1], flush=True)\n")
    browser.chmod(0o700)
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    env = subprocess_env(BROWSER=str(browser), XDG_RUNTIME_DIR=str(runtime))
    proc = subprocess.Popen([sys.executable, "-m", "ml_persistence", "ui", "--db", db_path, "--port", "0", "--open"],
                            cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines.put), daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=60)
        m = re.search(r"at (http://127\.0\.0\.1:(\d+)/\?token=([A-Za-z0-9_\-]{43}))$", first.strip())
        assert m, first
        url, port, token = m.groups()
        line = lines.get(timeout=60)
        while not line.startswith("opened "):
            line = lines.get(timeout=60)
        opened = line.split()[1]
        assert token not in opened
        page = runtime / "ml_persistence" / f"ui-{port}-open.html"
        assert opened == page.as_uri()
        assert os.stat(page).st_mode & 0o777 == 0o600
        assert os.stat(page.parent).st_mode & 0o777 == 0o700
        assert f'content="0;url={url}"' in page.read_text()
        assert fetch(f"http://127.0.0.1:{port}/", {"Authorization": f"Bearer {token}"})[0] == 200  # serving
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        assert not page.exists()  # it held the token: gone with the server
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        reader.join(timeout=10)


@pytest.mark.parametrize("args, refused", [
    (["--host", "0.0.0.0", "--no-token"], "--no-token is refused on 0.0.0.0"),
    (["--host", "::", "--no-token"], "--no-token is refused on ::"),
    (["--no-token", "--token-file", "token"], "--no-token and --token-file contradict each other"),
    (["--artifact-root", "no-such-dir"], "--artifact-root no-such-dir is not a directory"),
])
def test_refused_flags_are_one_line_and_exit_2(db_path: str, tmp_path: Path, args: list[str], refused: str) -> None:
    build(db_path, tmp_path)
    (tmp_path / "token").write_text("x" * 43)
    done = subprocess.run([sys.executable, "-m", "ml_persistence", "ui", "--db", db_path, "--port", "0", *args],
                          cwd=tmp_path, env=subprocess_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [f"ml-persistence: {refused}" + (
        ": beyond loopback the UI always needs a token" if "refused on" in refused else "")], done.stderr


def test_token_url_opened_from_another_site_or_a_file_still_logs_in(db_path: str, tmp_path: Path) -> None:
    """A SameSite=Strict cookie does not go with a cross-site redirect: such an opening continues from our page."""
    build(db_path, tmp_path)
    with TestClient(create_app(db_path, token=TOKEN)) as client:
        cross = {"Sec-Fetch-Site": "cross-site"}
        response = client.get(f"/?token={TOKEN}", headers=cross, follow_redirects=False)
        assert response.status_code == 200 and "location" not in response.headers
        assert '<meta http-equiv="refresh" content="0;url=/">' in response.text and TOKEN not in response.text
        cookie = response.headers["set-cookie"].lower()
        assert cookie.startswith(f"mlp_token={TOKEN}") and "samesite=strict" in cookie and "httponly" in cookie
        hostile = client.get(f"/?token={TOKEN}&q=%22%3E%3Cscript%3Ealert(1)%3C/script%3E", headers=cross)
        assert "<script" not in hostile.text and "&quot;" not in hostile.text  # the query stays URL-encoded
        assert client.get(f"/?token={TOKEN}", follow_redirects=False).status_code == 303  # typed, or from a terminal
        assert client.get("/api/experiments").json()["experiments"]


def _as_nobody(program: str, *args: str) -> Any:
    """Run a stdlib-only Python program as nobody; return what it printed as JSON."""
    if os.geteuid() != 0 or not shutil.which("setpriv") or not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("needs root, setpriv and /usr/bin/python3 to act as a second user (CI has them)")
    done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", SYSTEM_PYTHON, "-I",
                           "-c", program, *args], cwd="/", env={"PATH": os.defpath}, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# Fetch each path as nobody, plain and with a guessed token: {path: [status, status, body bytes seen]}.
NOBODY_READS = r'''
import json, os, sys, urllib.error, urllib.request
assert os.getuid() == 65534
base, paths = sys.argv[1], sys.argv[2:]

class Stay(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None

opener = urllib.request.build_opener(Stay)

def get(url, headers):
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()

out = {}
for path in paths:
    plain = get(base + path, {})
    guessed = get(base + path + ("&" if "?" in path else "?") + "token=guess", {"Authorization": "Bearer guess"})
    out[path] = [plain[0], guessed[0], (plain[1] + guessed[1]).decode("latin-1")]
print(json.dumps(out))
'''


def test_another_local_user_reads_nothing_from_a_loopback_ui(db_path: str, tmp_path: Path) -> None:
    built = build(db_path, tmp_path)
    a = built["a"]
    paths = ["/", "/api/experiments", f"/api/experiments/{a}", f"/api/experiments/{a}/metric?name=loss",
             f"/api/compare?ids={a},{built['b']}", f"/api/experiments/{a}/artifacts/{built['artifacts']['png']}",
             f"/api/experiments/{a}/artifacts/{built['artifacts']['log']}", "/static/app.js"]
    with ui_server(db_path, cwd=tmp_path) as server:
        seen = _as_nobody(NOBODY_READS, server.base, *paths)
        for path in paths:
            plain, guessed, body = seen[path]
            assert (plain, guessed) == (401, 401), (path, seen[path])
            assert "alpha-ppo" not in body and "epoch 1 ok" not in body and "PNG" not in body, path
        # The same user with the URL gets in: what stops nobody is the token, not the network.
        assert server.get(f"/api/experiments/{a}/artifacts/{built['artifacts']['log']}")[2] == b"epoch 1 ok\n"
        server.stop()


# -- artifacts only from inside the roots ----------------------------------------------------------------------


class Layout:
    """A database directory, a directory elsewhere, and artifacts registered inside, outside and escaping."""

    def __init__(self, db: str, db_dir: Path, elsewhere: Path, run: int, ids: dict[str, int]) -> None:
        self.db, self.db_dir, self.elsewhere, self.run, self.ids = db, db_dir, elsewhere, run, ids

    def url(self, key: str) -> str:
        return f"/api/experiments/{self.run}/artifacts/{self.ids[key]}"


SECRET = b"only the victim may read this\n"
INSIDE = b"a plot beside the database\n"


@pytest.fixture
def layout(db_path: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Layout:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "secret.txt").write_bytes(SECRET)
    (tmp_path / "inside.txt").write_bytes(INSIDE)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deeper.txt").write_bytes(INSIDE)
    (tmp_path / "escape.txt").symlink_to(elsewhere / "secret.txt")
    (tmp_path / "escape_dir").symlink_to(elsewhere, target_is_directory=True)
    (tmp_path / "alias.txt").symlink_to(tmp_path / "inside.txt")
    os.mkfifo(tmp_path / "pipe.txt")
    dotdot = os.path.relpath(elsewhere / "secret.txt", tmp_path)
    assert dotdot.startswith("..")
    registered = {
        "inside": str(tmp_path / "inside.txt"),
        "inside_relative": "inside.txt",
        "inside_dotdot": str(tmp_path / "sub" / ".." / "sub" / "deeper.txt"),
        "inside_symlink": str(tmp_path / "alias.txt"),
        "outside": str(elsewhere / "secret.txt"),
        "symlink_out": str(tmp_path / "escape.txt"),
        "symlinked_dir_out": str(tmp_path / "escape_dir" / "secret.txt"),
        "dotdot_relative": dotdot,
        "dotdot_absolute": str(tmp_path) + "/" + dotdot,
        "etc_passwd": "/etc/passwd",
        "proc_mem": "/proc/self/mem",
        "fifo_inside": str(tmp_path / "pipe.txt"),
        "directory_inside": str(tmp_path / "sub"),
    }
    tracker = ExperimentTracker(db_path)
    run = tracker.start_experiment("artifacts")
    ids = {key: tracker.log_artifact(path, "file") for key, path in registered.items()}
    tracker.end_experiment()
    ml_persistence.shutdown()
    # What the library refuses, a row written another way may still hold.
    conn = sqlite3.connect(db_path)
    with conn:
        for key, path in (("nul", str(tmp_path / "inside.txt") + "\0.png"), ("empty", ""), ("number", 7)):
            ids[key] = conn.execute("INSERT INTO artifacts (experiment_id, artifact_type, artifact_path) "
                                    "VALUES (?, 'file', ?)", (run, path)).lastrowid
    conn.close()
    return Layout(db_path, tmp_path, elsewhere, run, ids)


SERVED = {"inside", "inside_relative", "inside_dotdot", "inside_symlink"}


def test_only_artifacts_inside_the_roots_are_served(layout: Layout) -> None:
    with TestClient(create_app(layout.db, token=TOKEN), headers=AUTH) as client:
        listed = {a["id"]: a["url"] for a in client.get(f"/api/experiments/{layout.run}").json()["artifacts"]}
        for key in layout.ids:
            response = client.get(layout.url(key))
            if key in SERVED:
                assert response.status_code == 200 and response.content == INSIDE, key
                assert listed[layout.ids[key]] == layout.url(key), key
            else:
                assert response.status_code == 404, (key, response.status_code)
                assert SECRET not in response.content and b"root:" not in response.content, key
                assert listed[layout.ids[key]] is None, key  # the page shows it as not served


def test_artifact_root_flag_adds_a_directory(layout: Layout) -> None:
    with TestClient(create_app(layout.db, token=TOKEN, artifact_roots=[str(layout.elsewhere)]),
                    headers=AUTH) as client:
        for key in ("outside", "symlink_out", "symlinked_dir_out", "dotdot_relative", "dotdot_absolute"):
            response = client.get(layout.url(key))
            assert (response.status_code, response.content) == (200, SECRET), key
        for key in ("etc_passwd", "proc_mem", "fifo_inside", "directory_inside"):
            assert client.get(layout.url(key)).status_code == 404, key


def test_cli_serves_only_inside_the_roots_even_with_the_token(layout: Layout) -> None:
    with ui_server(layout.db, cwd=layout.db_dir) as server:
        for key in layout.ids:
            status, _, body = server.get(layout.url(key))
            assert status == (200 if key in SERVED else 404), (key, status)
            assert SECRET not in body
        server.stop()
    with ui_server(layout.db, "--artifact-root", str(layout.elsewhere), cwd=layout.db_dir) as server:
        assert server.get(layout.url("outside"))[2] == SECRET
        assert server.get(layout.url("etc_passwd"))[0] == 404
        server.stop()


# -- never a 500 ---------------------------------------------------------------------------------------------


def asgi_get(app: Any, raw_path: bytes, query: bytes = b"", headers: Optional[list] = None) -> int:
    """Send one GET straight to the ASGI app (no client-side URL length limit); return the status."""
    from urllib.parse import unquote_to_bytes

    started: list[int] = []
    given = list(headers or [])

    async def call() -> None:
        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.start":
                started.append(message["status"])

        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": unquote_to_bytes(raw_path).decode("utf-8", "replace"),
                 "raw_path": raw_path, "query_string": query, "root_path": "", "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 80), "headers": given if any(k == b"host" for k, _ in given)
                 else [(b"host", b"127.0.0.1"), *given]}
        await app(scope, receive, send)

    anyio.run(call)
    assert len(started) == 1
    return started[0]


@pytest.fixture
def hostile_app(db_path: str, tmp_path: Path) -> Iterator[tuple[Any, dict[str, Any]]]:
    built = build(db_path, tmp_path)
    yield create_app(db_path, token=TOKEN, hosts={"127.0.0.1"}), built


def _hostile_urls(a: int) -> list[tuple[bytes, bytes]]:
    digits = b"9" * 5000
    tags = b"&".join(b"tag=t%d" % i for i in range(2000))
    paths = [b"/api/experiments/" + digits, b"/api/experiments/" + b"0" * 5000 + b"1",
             b"/api/experiments/%d/artifacts/" % a + digits, b"/api/experiments/" + digits + b"/artifacts/1",
             b"/api/experiments/" + digits + b"/metric", b"/api/experiments/-1", b"/api/experiments/1.5",
             b"/api/experiments/%EF%BC%91", b"/api/experiments/\xff", b"/api/experiments/%ff%fe",
             b"/api/experiments/%ed%a0%80", b"/api/experiments/%00", b"/api/experiments/1%00",
             b"/static/%00", b"/static/\xff", b"/static/" + b"a/" * 3000, b"/static/" + b"a" * 5000,
             b"/static/..%2f..%2fetc%2fpasswd", b"/%ff", b"/" + b"x" * 100_000,
             b"/api/experiments/%d/artifacts/%%2e%%2e" % a, b"/api/experiments/%d/artifacts/-1" % a]
    metric = b"/api/experiments/%d/metric" % a
    queries = [(b"/api/experiments", tags), (b"/api/experiments", b"tag=" + b"x" * 200_000),
               (b"/api/experiments", b"q=" + b"%25" * 60_000), (b"/api/experiments", b"q=" + b"x" * 200_000),
               (b"/api/experiments", b"q=%ed%a0%80&type=%ff&status=%00&tag=%c0%af"),
               (b"/api/experiments", b"&".join(b"q=%d" % i for i in range(20_000))),
               (b"/api/experiments", b"status=running&" + tags), (b"/api/experiments", b"%zz=%zz&&&=&"),
               (b"/api/experiments", b"type=" + b"%5B" * 30_000),
               (metric, b"name=loss&points=" + digits), (metric, b"name=loss&points=-" + digits),
               (metric, b"name=loss&points=-5"), (metric, b"name=loss&points=0"), (metric, b"name=loss&points=abc"),
               (metric, b"name=loss&points=1e9"), (metric, b"name=loss&points=%00"), (metric, b"name=loss&points=nan"),
               (metric, b"name=%ed%a0%80&x=time"), (metric, b"name=" + b"x" * 200_000), (metric, b"name=%00&x=%ff"),
               (metric, b"name=loss&x=step&x=episode&points=1&points=2"), (metric, b"name=loss&" + tags),
               (b"/api/compare", b"ids=" + digits), (b"/api/compare", b"ids=" + b",".join([b"1"] * 20_000)),
               (b"/api/compare", b"ids=" + b",".join(b"%d" % i for i in range(5000))),
               (b"/api/compare", b"ids=-1,abc,%ff"), (b"/api/compare", b"ids=,,,"), (b"/api/compare", b""),
               (b"/", b"token=%ff%fe"), (b"/", b"token=" + b"x" * 100_000)]
    return [(p, b"") for p in paths] + queries


def test_hostile_urls_are_never_a_server_error(hostile_app: tuple[Any, dict[str, Any]]) -> None:
    app, built = hostile_app
    auth = [(b"authorization", f"Bearer {TOKEN}".encode())]
    for path, query in _hostile_urls(built["a"]):
        for headers in (auth, []):
            status = asgi_get(app, path, query, headers)
            assert status in (200, 303, 400, 401, 404), (path[:80], query[:80], status)


HOSTILE_HEADERS = [[(b"host", b"[")], [(b"host", b"[::1")], [(b"host", b"\xff\xfe:80")], [(b"host", b":")],
                   [(b"authorization", b"Bearer \xff\xfe")], [(b"authorization", b"Bearer")],
                   [(b"cookie", b"mlp_token=\xff; =; ;;; a=\"")], [(b"cookie", b"mlp_token=" + TOKEN.encode() + b"\x00")],
                   [(b"range", b"bytes=-1-2,99999999999999999999-")], [(b"if-range", b"\xff")]]


def test_hostile_headers_are_never_a_server_error(hostile_app: tuple[Any, dict[str, Any]]) -> None:
    app, built = hostile_app
    artifact = b"/api/experiments/%d/artifacts/%d" % (built["a"], built["artifacts"]["png"])
    for headers in HOSTILE_HEADERS:
        for path in (b"/", b"/api/experiments", artifact, b"/static/app.js"):
            status = asgi_get(app, path, b"", [*headers, (b"authorization", f"Bearer {TOKEN}".encode())])
            assert status in (200, 400, 401, 404, 416), (path, headers, status)


def test_the_issue_urls_are_404_and_400(hostile_app: tuple[Any, dict[str, Any]]) -> None:
    app, _ = hostile_app
    with TestClient(app, base_url="http://127.0.0.1", headers=AUTH, raise_server_exceptions=False) as client:
        assert client.get("/api/experiments/" + "9" * 5000).status_code == 404
        many = client.get("/api/experiments?" + "&".join(f"tag=t{i}" for i in range(2000)))
        assert many.status_code == 400 and "tag" in many.json()["error"]
        assert client.get("/api/experiments?tag=rl&tag=rl").status_code == 200  # repeats are one filter


def test_random_urls_are_never_a_server_error(hostile_app: tuple[Any, dict[str, Any]]) -> None:
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    app, built = hostile_app
    a = str(built["a"])
    auth = [(b"authorization", f"Bearer {TOKEN}".encode())]
    segment = st.one_of(st.sampled_from(["api", "experiments", "metric", "artifacts", "compare", "static", a,
                                         "..", "%2e%2e", "%00", "%ff", "app.js", ""]),
                        st.integers(min_value=-10**30, max_value=10**30).map(str),
                        st.sampled_from([19, 20, 4300, 4301, 6000]).map(lambda n: "9" * n),
                        st.text(max_size=30).map(lambda t: quote(t, safe="")))
    key = st.sampled_from(["name", "x", "points", "ids", "tag", "type", "status", "q", "token", "zz"])
    value = st.one_of(st.sampled_from(["loss", "step", "time", "episode", a, f"{a},{a}", "rl"]),
                      st.integers(min_value=-10**40, max_value=10**40).map(str),
                      st.text(max_size=40).map(lambda t: quote(t, safe="")),
                      st.binary(max_size=20).map(lambda b: quote(b, safe="")))

    routes = st.sampled_from(["/api/experiments/{}", "/api/experiments/{}/metric", "/api/experiments/{}/artifacts/1",
                              f"/api/experiments/{a}/artifacts/{{}}", "/static/{}", "/{}", "/api/{}"])
    paths = st.one_of(st.tuples(routes, segment).map(lambda r: r[0].format(r[1])),
                      st.lists(segment, min_size=1, max_size=6).map(lambda p: "/" + "/".join(p)))

    @hypothesis.settings(max_examples=300, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(path=paths, query=st.lists(st.tuples(key, value), max_size=8), authorized=st.booleans())
    def check(path: str, query: list[tuple[str, str]], authorized: bool) -> None:
        raw_path = path.encode()
        raw_query = "&".join(f"{k}={v}" for k, v in query).encode()
        status = asgi_get(app, raw_path, raw_query, auth if authorized else [])
        assert status < 500, (raw_path, raw_query, status)

    check()


# -- points= from a fixed set: the curve cache keeps working ----------------------------------------------------


def test_nearby_points_values_share_one_cached_curve(db_path: str, tmp_path: Path) -> None:
    built = build(db_path, tmp_path)
    app = create_app(db_path, token=TOKEN)
    cache = app.state.series_cache
    metric = f"/api/experiments/{built['a']}/metric?name=loss&x=step&points="
    with TestClient(app, headers=AUTH) as client:
        first = client.get(metric + "1900").json()
        assert (cache.misses, cache.hits) == (1, 0)
        for nearby in ("2100", "2000", "1800", "2999"):  # all nearest to 2000
            assert client.get(metric + nearby).json() == first
        assert (cache.misses, cache.hits) == (1, 4)
        for other in ("1", "600", "1400", "3600", "10000000"):  # 250, 500, 1000, 5000, 5000
            assert client.get(metric + other).status_code == 200
        assert cache.misses == 5  # 250, 500, 1000 and 5000: one computation each, however they were asked
