"""The web interface's rows of bench/faults.py (issue 18), each tried for real: a `stripread serve
--simulate --web-login` subprocess on a free loopback port, with a fresh database and a technician
account, attacked over HTTP. `ROWS` is a list of (name, function); each function returns
(figure text, passed).

    python bench/faults_web.py        # runs the rows and prints them (bench/faults.py prints the table)
"""
from __future__ import annotations

import collections
import contextlib
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
USER, PASSWORD = "tech-1", "a long technician password"
PATIENT = "BENCH-1"
MEMORY_RISE_MB = 100       # two scrypt hashes (16 MB each), 120 connections, 40 worker threads (unbounded: +656 MB)
SECURITY = {"content-security-policy": "frame-ancestors 'none'", "x-frame-options": "DENY",
            "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


class Served:
    """`stripread serve --simulate --web-login` in a subprocess, for one row."""

    def __enter__(self) -> Served:
        self.folder = Path(tempfile.mkdtemp(prefix="faults-web-"))
        db = self.folder / "results.db"
        cli = [sys.executable, "-m", "device.cli.commands"]
        env = dict(os.environ, STRIPREAD_DATA=str(self.folder), PYTHONPATH=str(REPO))
        (self.folder / "password").write_text(PASSWORD)
        subprocess.run(cli + ["user", USER, "--password-file", str(self.folder / "password"), "--db", str(db)],
                       check=True, capture_output=True, env=env, cwd=REPO)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = self.folder / "server.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(cli + ["serve", "--simulate", "--speed", "60", "--web-login", "--web",
                                                   f"127.0.0.1:{port}", "--db", str(db)],
                                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        deadline = time.monotonic() + 90
        while "web interface ready" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(30)
        shutil.rmtree(self.folder, ignore_errors=True)

    def memory_mb(self) -> dict[str, float]:
        """The server's resident memory now (VmRSS) and its peak so far (VmHWM), in MB."""
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return {key: int(re.search(rf"^{key}:\s+(\d+) kB", status, re.M).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


def form_token(client: httpx.Client, path: str = "/tech/login") -> str:
    return re.search(r'name="form_token" value="([^"]+)"', client.get(path).text).group(1)


def login(client: httpx.Client, password: str = PASSWORD, token: str | None = None) -> httpx.Response:
    return client.post("/tech/login", data={"username": USER, "password": password,
                                            "form_token": token or form_token(client)})


def _tally(statuses) -> str:
    return ", ".join(f"{count} x {status}" for status, count in sorted(collections.Counter(statuses).items()))


def wrong_logins() -> tuple[str, bool]:
    """200 wrong passwords from one client, then the right one."""
    with Served() as server, server.client() as client:
        token = form_token(client)
        statuses = [login(client, f"guess {i:03d} at it", token).status_code for i in range(200)]
        right = login(client, PASSWORD, token)
    locked = re.search(r"locked for \d+ more minutes?", right.text)
    figure = (f"200 wrong: {_tally(statuses)}; then the right one: {right.status_code}"
              f"{f' ({locked.group(0)})' if locked else ''}")
    return figure, right.status_code == 429 and statuses.count(401) <= 5 and max(statuses) < 500


def concurrent_logins(attempts: int = 120) -> tuple[str, bool]:
    """`attempts` logins with the right password released at once; the server's memory from /proc."""
    with Served() as server:
        clients = [server.client() for _ in range(attempts)]
        tokens = [form_token(client) for client in clients]
        before = server.memory_mb()
        start, statuses = threading.Barrier(attempts), []

        def attempt(client, token):
            start.wait()
            try:
                statuses.append(login(client, PASSWORD, token).status_code)
            except httpx.HTTPError as exc:
                statuses.append(type(exc).__name__)
        threads = [threading.Thread(target=attempt, args=pair) for pair in zip(clients, tokens)]
        began = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - began
        after = server.memory_mb()
        for client in clients:
            client.close()
    rise = after["VmHWM"] - before["VmRSS"]
    figure = (f"{attempts} at once: {_tally(map(str, statuses))} in {seconds:.1f} s; server RSS "
              f"{before['VmRSS']:.0f} MB before, peak {after['VmHWM']:.0f} MB "
              f"(+{rise:.0f} MB, at most +{MEMORY_RISE_MB})")
    errors = [s for s in statuses if not (isinstance(s, int) and (s < 500 or s == 503))]
    return figure, not errors and rise < MEMORY_RISE_MB


def fuzz_api(examples: int = 50) -> tuple[str, bool]:
    """schemathesis's valid and invalid requests to every operation of /openapi.json, logged in."""
    import requests
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    with Served() as server, server.client() as client:
        login(client)
        session = requests.Session()
        session.cookies.update(dict(client.cookies))
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        statuses = []
        operations = [result.ok() for result in schema.get_all_operations()]
        for operation in operations:
            for mode in schemathesis.GenerationMode:
                @given(case=operation.as_strategy(mode))
                @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck),
                          database=None, derandomize=True)
                def call(case):
                    statuses.append(case.call(base_url=server.url, session=session).status_code)
                with contextlib.suppress(Unsatisfiable):    # no invalid request exists for this operation
                    call()
    errors = sum(status >= 500 for status in statuses)
    return (f"{len(statuses)} requests to {len(operations)} operations: {errors} answered 5xx "
            f"({_tally(statuses)})"), errors == 0


def headers_everywhere() -> tuple[str, bool]:
    """A real test stored through the page, then every page, API answer, error and static file."""
    with Served() as server, server.client() as client:
        pages = ["/", "/api/results"]                                        # first not logged in
        answers = [client.get(path) for path in pages]
        login(client)
        client.post("/test", data={"patient_id": PATIENT, "form_token": form_token(client, "/test")})
        deadline = time.monotonic() + 90
        while (state := client.get("/api/session").json())["sessions"] < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        seq = state["last_record"]["seq"] if state["last_record"] else 1
        more = ["/", "/test", "/test/live", "/history", f"/results/{seq}", f"/patients/{PATIENT}", "/tech/login",
                "/tech", "/clinic", "/api/session", "/api/session/preview.jpg", "/api/results", f"/api/results/{seq}",
                f"/api/patients/{PATIENT}/trends", "/api/tech/status", "/api/clinic/alerts",
                f"/thumbnails/{seq}/GLU.png", "/tech/qc/negative.png", "/openapi.json", "/static/style.css",
                "/static/live.js", "/nowhere", "/results/abc", "/api/results?limit=0"]
        pages += more
        answers += [client.get(path) for path in more]
        answers.append(login(client, "a wrong password"))
        pages.append("POST /tech/login")
    missing = [path for path, answer in zip(pages, answers)
               if not all(value in answer.headers.get(name, "") for name, value in SECURITY.items())]
    private = [(path, answer) for path, answer in zip(pages, answers) if not path.startswith("/static/")]
    cached = [path for path, answer in private if answer.headers.get("cache-control") != "no-store"]
    figure = (f"{len(answers) - len(missing)} of {len(answers)} responses ({_tally(a.status_code for a in answers)}) "
              f"with CSP, frame-ancestors 'none', nosniff, no-referrer; {len(private) - len(cached)} of "
              f"{len(private)} outside /static/ no-store")
    if missing or cached:
        figure += f"; missing on {len(set(missing + cached))} paths, e.g. {sorted(set(missing + cached))[:3]}"
    return figure, not missing and not cached and state["sessions"] >= 1


def hostile_inputs() -> tuple[str, bool]:
    """The issue's 500s: huge numbers, limit=-1, a non-ASCII session cookie, 1 MB patient ids."""
    big, odd = "99999999999999999999", {"cookie": "sr_session=caf\u00e9\u2603".encode()}
    with Served() as server, server.client() as client:
        statuses = [_status(client.get, path, headers=odd) for path in ("/", "/history", "/api/results")]
        login(client)
        statuses += [_status(client.get, path) for path in (
            f"/results/{big}", f"/api/results/{big}", f"/api/results?limit={big}", "/api/results?limit=-1",
            f"/thumbnails/{big}/LEU.png", "/patients/" + "P" * 100, "/api/patients/%C3%A9/trends")]
        statuses.append(_status(client.post, "/test", data={"patient_id": "P" * 2 ** 20,
                                                             "form_token": form_token(client, "/test")}))
        statuses.append(_status(_get_raw, server.url, "/patients/" + "P" * 2 ** 20, client.cookies["sr_session"]))
        log = server.log.read_text()
    errors = log.count('"msg": "unexpected ') + log.count("Exception in ASGI application")
    figure = f"{len(statuses)} hostile requests: {_tally(map(str, statuses))}; {errors} errors logged"
    return figure, all(isinstance(s, int) and s < 500 for s in statuses) and errors == 0


def _status(request, *args, **kwargs) -> int | str:
    """The answer's status, or how the connection failed."""
    try:
        answer = request(*args, **kwargs)
    except (httpx.HTTPError, OSError, http.client.HTTPException) as exc:
        return type(exc).__name__
    return answer.status_code if isinstance(answer, httpx.Response) else answer


def _get_raw(url: str, path: str, session: str) -> int:
    """A GET by http.client, which (unlike httpx, at most 64 kB) sends a URL of any length."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("GET", path, headers={"Cookie": f"sr_session={session}"})
        return connection.getresponse().status
    finally:
        connection.close()


ROWS = [
    ("web: 200 wrong logins, then the right password", wrong_logins),
    ("web: 120 concurrent logins, server peak RSS", concurrent_logins),
    ("web: schemathesis on /openapi.json, responses 500", fuzz_api),
    ("web: security headers on every page", headers_everywhere),
    ("web: huge numbers, bad cookies, 1 MB ids: responses 500", hostile_inputs),
]

if __name__ == "__main__":
    for name, row in ROWS:
        began = time.monotonic()
        figure, passed = row()
        print(f"{'ok  ' if passed else 'FAIL'} {name}: {figure} [{time.monotonic() - began:.0f} s]", flush=True)
