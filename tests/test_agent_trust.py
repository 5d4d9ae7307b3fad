"""Who may use an agent: a token on every TCP listener, the peer's uid on a Unix socket, bounded
unauthenticated connections, slower answers to wrong tokens, and one-line startup errors.

Another local user is `nobody` (tests/otheruser.py), which needs root; those tests skip elsewhere.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest
from agent_process import AgentProcess, short_socket
from conftest import PYTHON, rows, subprocess_env
from otheruser import other_user  # noqa: F401 - a fixture

import ml_persistence
from ml_persistence import ExperimentTracker, MetricsLogger, address
from ml_persistence import protocol as p

GUARD = 120.0  # a subprocess that runs longer than this has hung
TOKEN = "correct-horse-battery-staple-0123456789"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tcp_agent(tmp_path: Path, *extra: str, port: int = 0) -> AgentProcess:
    return AgentProcess(str(tmp_path / "agent.db"), [f"tcp://127.0.0.1:{port or free_port()}"], tmp_path, extra=extra)


def hello_reply(url: str, token: str | None) -> p.Message | None:
    """Say Hello with ``token`` on a raw socket; return the agent's answer, or None if it just closed."""
    where = address.parse(url)
    if where.kind == "unix":
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(30)
        connection.connect(where.path)
    else:
        connection = socket.create_connection((where.host, where.port), 30)
    with connection as sock:
        sock.sendall(p.frame(p.Hello(p.PROTOCOL_VERSION, "raw-client", 1, "h", token)))
        decoder = p.FrameDecoder()
        while True:
            data = sock.recv(65536)
            if not data:
                return None
            bodies = decoder.feed(data)
            if bodies:
                return p.decode_agent_message(bodies[0])


# -- a token on every TCP listener, made for this user when none is given ---------------------------


def test_a_tcp_agent_makes_a_private_token_that_this_users_clients_find(tmp_path: Path) -> None:
    with tcp_agent(tmp_path) as agent:
        port = address.parse(agent.url).port
        path = Path(address.token_path(port))
        info = path.stat()
        assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        token = path.read_text().strip()
        assert len(token) >= 43  # 256 bits of URL-safe base64
        # The same user needs no configuration at all ...
        tracker = ExperimentTracker(agent=agent.url)
        exp = tracker.start_experiment("zero-setup")
        tracker.log_metric("loss", 0.5, step=0)
        tracker.flush(timeout=30)
        assert [r["value"] for r in MetricsLogger(agent=agent.url).get_metric_history(exp, "loss")] == [0.5]
        tracker.end_experiment()
        ml_persistence.shutdown(timeout=30)
        # ... while a raw client with no token, or a wrong one, is refused, on loopback too.
        for wrong in (None, "x" * 43, token[:-1] + ("A" if token[-1] != "A" else "B")):
            reply = hello_reply(agent.url, wrong)
            assert type(reply) is p.Refused and "token" in reply.reason, reply
        assert type(hello_reply(agent.url, token)) is p.Welcome
        assert agent.stop() == 0, agent.log()
    assert not path.exists()  # removed at exit
    assert rows(agent.db, "SELECT name FROM experiments") == [("zero-setup",)]


def test_a_published_token_is_sent_only_to_the_loopback_address_it_was_made_for(tmp_path: Path) -> None:
    # The agent binds 127.0.0.1:P only; anyone else on the machine may bind [::1]:P. A trainer sent
    # to tcp://[::1]:P (or a localhost that resolves to ::1) must not hand that listener the token.
    if not socket.has_ipv6:
        pytest.skip("no IPv6 loopback here")
    with tcp_agent(tmp_path) as agent:
        port = address.parse(agent.url).port
        impostor = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        impostor.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            impostor.bind(("::1", port))
        except OSError as exc:
            impostor.close()
            pytest.skip(f"cannot bind [::1]:{port} beside the agent: {exc}")
        impostor.listen(1)
        impostor.settimeout(60)
        trainer = subprocess.Popen(
            [PYTHON, "-c", textwrap.dedent(f"""
                from ml_persistence import ExperimentTracker
                try:
                    ExperimentTracker(agent="tcp://[::1]:{port}").start_experiment("lured")
                except Exception as exc:
                    print(type(exc).__name__)
            """)],
            env=subprocess_env(ML_PERSISTENCE_AGENT_TIMEOUT="5"), cwd=tmp_path, stdout=subprocess.PIPE, text=True,
        )
        try:
            conn, _ = impostor.accept()
            with conn:
                conn.settimeout(60)
                decoder = p.FrameDecoder(p.HELLO_MAX_BYTES)
                bodies: list[bytes] = []
                while not bodies:
                    data = conn.recv(65536)
                    assert data, "the trainer closed before saying Hello"
                    bodies = decoder.feed(data)
                hello = p.decode_client_message(bodies[0])
        finally:
            impostor.close()
            trainer.kill()
            trainer.wait(GUARD)
        assert type(hello) is p.Hello and hello.token is None
        assert agent.stop() == 0


def test_a_client_follows_a_restarted_agent_to_its_new_token(tmp_path: Path) -> None:
    port = free_port()
    agent = tcp_agent(tmp_path, port=port).start()
    try:
        tracker = ExperimentTracker(agent=agent.url)
        exp = tracker.start_experiment("across-restarts")
        first = Path(address.token_path(port)).read_text()
        for restart in range(3):
            for step in range(restart * 100, restart * 100 + 100):
                tracker.log_metric("loss", float(step), step=step)
            tracker.flush(timeout=30)
            assert agent.stop() == 0, agent.log()
            for step in range(restart * 100 + 100, restart * 100 + 200):  # logged while no agent runs
                tracker.log_metric("gap", float(step), step=step)
            agent.start()  # same port, a new token: the client re-reads it when it reconnects
        assert Path(address.token_path(port)).read_text() != first
        tracker.flush(timeout=30)
        tracker.end_experiment()
    finally:
        ml_persistence.shutdown(timeout=30)
        agent.stop()
    assert rows(
        agent.db,
        "SELECT COUNT(*), COUNT(DISTINCT metric_name || ':' || step) FROM metrics WHERE experiment_id = ?",
        (exp,),
    ) == [(600, 600)]


def test_another_user_can_neither_log_to_nor_read_from_a_loopback_tcp_agent(tmp_path: Path, other_user) -> None:
    with tcp_agent(tmp_path) as agent:
        tracker = ExperimentTracker(agent=agent.url)
        exp = tracker.start_experiment("victim")
        tracker.log_metric("secret", 42.0, step=0)
        tracker.flush(timeout=30)
        token_path = address.token_path(address.parse(agent.url).port)
        intruder = other_user.run(
            textwrap.dedent(
                f"""
                import os
                from ml_persistence import ExperimentTracker, MetricsLogger, AgentRefusedError
                try:
                    open({token_path!r}).read()
                    print("token file readable")
                except PermissionError:
                    print("token file unreadable")
                for token in (None, "guess-guess-guess-guess-guess"):
                    try:
                        ExperimentTracker(agent={agent.url!r}, token=token).start_experiment("intruder")
                        print("logged")
                    except AgentRefusedError as exc:
                        print("log refused:", exc)
                    try:
                        MetricsLogger(agent={agent.url!r}, token=token).get_metric_history({exp}, "secret")
                        print("read")
                    except AgentRefusedError as exc:
                        print("read refused:", exc)
                """
            ),
            env=other_user.env(ML_PERSISTENCE_AGENT_TIMEOUT="60"),
        )
        lines = intruder.stdout.splitlines()
        assert lines[0] == "token file unreadable", intruder
        assert [line.split(":")[0] for line in lines[1:]] == ["log refused", "read refused"] * 2, intruder
        assert all("token" in line for line in lines[1:]), intruder
        tracker.end_experiment()
        ml_persistence.shutdown(timeout=30)
        assert agent.stop() == 0, agent.log()
    assert rows(agent.db, "SELECT name FROM experiments") == [("victim",)]


# -- Unix sockets: the peer's uid ------------------------------------------------------------------


def start_agent_as(other_user, directory: str, name: str, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start an agent as the other user on socket ``name`` in ``directory``; return it and its URL once ready."""
    url = f"unix://{directory}/{name}"
    proc = other_user.popen(
        "-m", "agent", "--db", f"{directory}/agent.db", "--listen", url, *extra,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()  # the ready line, or EOF if it failed
    assert "ready, listening on" in line, (line, proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
    return proc, url


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=GUARD)
    assert proc.returncode == 0, err
    return err


def test_a_unix_socket_agent_refuses_a_peer_of_another_uid_unless_allowed(tmp_path: Path, other_user) -> None:
    # root can reach nobody's 0700 directory and 0600 socket despite their modes: the uid check is what stops it.
    directory = other_user.private_dir()
    proc, url = start_agent_as(other_user, directory, "a.sock")
    try:
        with pytest.raises(ml_persistence.AgentRefusedError, match="connections from uid 0 are not allowed"):
            ExperimentTracker(agent=url).start_experiment("root-intruder")
    finally:
        ml_persistence.shutdown(timeout=30)
        err = stop(proc)
    assert "connections from uid 0 are not allowed" in err

    proc, url = start_agent_as(other_user, directory, "b.sock", "--allow-uid", "0")  # a new client: a.sock's refused
    try:
        tracker = ExperimentTracker(agent=url)
        exp = tracker.start_experiment("allowed-root")
        tracker.log_metric("loss", 1.0, step=0)
        tracker.flush(timeout=30)
        assert [r["value"] for r in MetricsLogger(agent=url).get_metric_history(exp, "loss")] == [1.0]
        tracker.end_experiment()
    finally:
        ml_persistence.shutdown(timeout=30)
        stop(proc)
    assert rows(f"{directory}/agent.db", "SELECT name FROM experiments") == [("allowed-root",)]


# -- token files and startup errors: one line, exit status 2 --------------------------------------


def run_agent(tmp_path: Path, *args: str, runner=None) -> subprocess.CompletedProcess:
    argv = [PYTHON, "-m", "agent", *args] if runner is None else runner.command("-m", "agent", *args)
    env = subprocess_env() if runner is None else runner.env()
    return subprocess.run(argv, cwd=tmp_path if runner is None else runner.site, env=env,
                          capture_output=True, text=True, timeout=GUARD, check=False)


def assert_one_line_exit_2(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("ml-persistence-agent: "), done.stderr
    for word in words:
        assert word in done.stderr, done.stderr
    assert "ready" not in done.stdout


@pytest.mark.parametrize(
    ("content", "mode", "words"),
    [
        (TOKEN, 0o644, ("accessible by other users", "0644", "chmod 600")),
        (TOKEN, 0o606, ("accessible by other users",)),
        (TOKEN, 0o620, ("accessible by other users",)),
        ("short-token-4711", 0o600, ("too weak", "22")),
        ("0123456789abcdef0123456789", 0o600, ("too weak", "32 if hex")),  # 26 hex digits: 104 bits
        ("", 0o600, ("empty",)),
    ],
    ids=["world-readable", "world-writable", "group-writable", "short", "short-hex", "empty"],
)
def test_an_unsafe_token_file_stops_the_agent_with_one_line(tmp_path: Path, content: str, mode: int, words) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(content + "\n")
    token_file.chmod(mode)
    done = run_agent(tmp_path, "--db", str(tmp_path / "a.db"), "--listen", f"tcp://127.0.0.1:{free_port()}",
                     "--token-file", str(token_file))
    assert_one_line_exit_2(done, *words)


def test_a_safe_token_file_is_accepted(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    with tcp_agent(tmp_path, "--token-file", str(token_file)) as agent:
        assert type(hello_reply(agent.url, TOKEN)) is p.Welcome
        # A token given by the user is not copied anywhere: clients get it from $ML_PERSISTENCE_TOKEN.
        assert not Path(address.token_path(address.parse(agent.url).port)).exists()
        assert agent.stop() == 0


def test_startup_failures_are_one_line_and_exit_status_2(tmp_path: Path) -> None:
    db = str(tmp_path / "a.db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_exit_2(
            run_agent(tmp_path, "--db", db, "--listen", f"tcp://127.0.0.1:{port}"),
            f"cannot listen on tcp://127.0.0.1:{port}", "in use",
        )
    assert_one_line_exit_2(
        run_agent(tmp_path, "--db", str(tmp_path / "missing" / "a.db"), "--listen", short_socket(tmp_path)),
        "does not exist", str(tmp_path / "missing"),
    )
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database, just text\n" * 100)
    assert_one_line_exit_2(
        run_agent(tmp_path, "--db", str(not_sqlite), "--listen", short_socket(tmp_path)), "is not an SQLite database"
    )
    assert_one_line_exit_2(
        run_agent(tmp_path, "--db", db, "--listen", f"tcp://127.0.0.1:{free_port()}", "--token-file",
                  str(tmp_path / "no-such-token")),
        "cannot read token file", "No such file",
    )
    assert_one_line_exit_2(run_agent(tmp_path, "--db", db, "--listen", f"tcp://0.0.0.0:{free_port()}"), "--token-file")


def test_permission_denied_is_one_line_and_exit_status_2(tmp_path: Path, other_user) -> None:
    readonly = tmp_path / "shared"
    readonly.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(readonly, 0o755)  # root's: nobody may look, not write
    sock_dir = other_user.private_dir()
    done = run_agent(tmp_path, "--db", str(readonly / "a.db"), "--listen", f"unix://{sock_dir}/a.sock",
                     runner=other_user)
    assert_one_line_exit_2(done, "permission denied", str(readonly / "a.db"))
    ExperimentTracker(str(readonly / "b.db"), agent=False).start_experiment("roots")
    ml_persistence.shutdown(timeout=30)
    done = run_agent(tmp_path, "--db", str(readonly / "b.db"), "--listen", f"unix://{sock_dir}/a.sock",
                     runner=other_user)
    assert_one_line_exit_2(done, "permission denied", str(readonly / "b.db"))


# -- bounded under abuse -----------------------------------------------------------------------------

FLOOD = r"""
import resource, socket, sys, threading
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
host, port, idle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for _ in range(idle):  # each starts a Hello and stalls (silent ones the kernel keeps from the agent: TCP_DEFER_ACCEPT)
    held.append(socket.create_connection((host, port), 30))
    held[-1].sendall(b"\x00\x00")
stop = threading.Event()
def reopen():
    while not stop.is_set():
        try:
            with socket.create_connection((host, port), 5) as sock:
                sock.sendall(b"\x00\x00")  # half a frame header: it reaches the agent, then leaves
        except OSError:
            pass
threads = [threading.Thread(target=reopen, daemon=True) for _ in range(4)]
for t in threads:
    t.start()
print("flooding", flush=True)
sys.stdin.readline()
stop.set()
for t in threads:
    t.join()
print("stopped", flush=True)
"""

TRAINER = """
import sys
from ml_persistence import ExperimentTracker
tracker = ExperimentTracker(agent=sys.argv[1])
exp = tracker.start_experiment("through-the-flood")
for step in range(100):
    tracker.log_metric("loss", 1.0 / (1 + step), step=step)
tracker.flush(timeout=10)
tracker.end_experiment()
print("done", exp, flush=True)
"""


def test_a_token_holder_gets_in_through_a_connection_flood_and_the_log_stays_small(tmp_path: Path) -> None:
    with tcp_agent(tmp_path) as agent:
        where = address.parse(agent.url)
        flood = subprocess.Popen(
            [PYTHON, "-c", FLOOD, where.host, str(where.port), "1500"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=subprocess_env(),
        )
        try:
            assert flood.stdout.readline().strip() == "flooding"
            trainer = subprocess.run(
                [PYTHON, "-c", TRAINER, agent.url], capture_output=True, text=True, timeout=GUARD,
                env=subprocess_env(ML_PERSISTENCE_AGENT_TIMEOUT="10"), cwd=tmp_path, check=False,
            )
            assert trainer.returncode == 0 and trainer.stdout.startswith("done"), trainer
        finally:
            flood.stdin.write("\n")
            flood.stdin.close()
            assert flood.stdout.readline().strip() == "stopped"
            flood.wait(GUARD)
        assert agent.stop() == 0, agent.log()
    log = agent.log()
    summaries = re.findall(r"refused (\d+) more connections from (\d+) peers", log)
    refused = sum(int(n) for n, _ in summaries)
    assert refused >= 1000, log[-3000:]  # the flood was refused ...
    assert len(log.splitlines()) < 100, log[-3000:]  # ... in a few summary lines, not a line each
    exp = int(trainer.stdout.split()[1])
    assert rows(agent.db, "SELECT COUNT(*) FROM metrics WHERE experiment_id = ?", (exp,)) == [(100,)]


def test_wrong_tokens_are_answered_later_and_later(tmp_path: Path) -> None:
    with tcp_agent(tmp_path) as agent:
        for _ in range(6):  # one after the other, as a guessing loop does
            reply = hello_reply(agent.url, "wrong-wrong-wrong-wrong-wrong")
            assert type(reply) is p.Refused and reply.reason == "wrong token"
        token = Path(address.token_path(address.parse(agent.url).port)).read_text().strip()
        assert type(hello_reply(agent.url, token)) is p.Welcome  # the token holder is not slowed down
        assert agent.stop() == 0
    delays = [float(d) for d in re.findall(r"wrong token \(answered after ([\d.]+) s\)", agent.log())]
    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.6], agent.log()


def test_a_token_the_user_gave_is_asked_of_unix_socket_clients_too(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    sock = short_socket(tmp_path)
    with AgentProcess(str(tmp_path / "agent.db"), [sock], tmp_path, extra=("--token-file", str(token_file))) as agent:
        refused = hello_reply(agent.url, None)
        assert type(refused) is p.Refused and "token" in refused.reason
        assert type(hello_reply(agent.url, "wrong" + TOKEN)) is p.Refused
        assert type(hello_reply(agent.url, TOKEN)) is p.Welcome
        assert agent.stop() == 0


def test_a_token_the_agent_made_for_tcp_is_not_asked_of_its_own_users_unix_clients(tmp_path: Path) -> None:
    sock = short_socket(tmp_path)
    listen = [sock, f"tcp://127.0.0.1:{free_port()}"]
    with AgentProcess(str(tmp_path / "agent.db"), listen, tmp_path) as agent:
        assert type(hello_reply(sock, None)) is p.Welcome
        assert agent.stop() == 0


@pytest.mark.parametrize(
    "host, key",
    [
        ("127.0.0.1", "loopback"),
        ("127.77.3.9", "loopback"),  # any local process can pick another source in 127/8
        ("::1", "loopback"),
        ("::ffff:127.0.0.2", "loopback"),
        ("192.0.2.7", "192.0.2.7"),
        ("2001:db8::1", "2001:db8::/64"),
        ("2001:db8::abcd:1", "2001:db8::/64"),  # one /64 is one peer
    ],
)
def test_peers_are_limited_under_keys_an_attacker_cannot_multiply(host: str, key: str) -> None:
    from agent.gate import peer_key

    assert peer_key(host) == key
