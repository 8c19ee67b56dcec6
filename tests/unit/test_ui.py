"""``ntng ui``: a real MLflow server on loopback, the address it prints, and a clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from ntng_ray.errors import NtngError
from ntng_ray.track import ui


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status


def group_is_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.integration
def test_serve_ui_answers_on_loopback_and_stops_cleanly(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'new' / 'mlflow.db'}"
    port = free_port()
    process = ui.serve_ui(uri, port=port)
    try:
        ui.wait_until_healthy(f"http://127.0.0.1:{port}", timeout=60, process=process)
        assert get(f"http://127.0.0.1:{port}/health") == 200
        assert get(f"http://127.0.0.1:{port}/") == 200
    finally:
        ui.stop_ui(process)
    assert process.returncode is not None
    assert group_is_gone(process.pid)
    assert (tmp_path / "new" / "mlflow.db").is_file()


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "example.com"])
def test_non_loopback_host_needs_explicit_permission(host: str, tmp_path: Path) -> None:
    with pytest.raises(NtngError, match="explicit --host"):
        ui.serve_ui(f"sqlite:///{tmp_path / 'mlflow.db'}", host=host)


def test_loopback_hosts() -> None:
    assert all(ui.is_loopback(h) for h in ("127.0.0.1", "::1", "localhost"))
    assert not any(ui.is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "example.com"))


def test_wait_until_healthy_fails_fast_when_the_server_exits() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    with pytest.raises(NtngError, match="exited with code 3"):
        ui.wait_until_healthy(f"http://127.0.0.1:{free_port()}", timeout=20, process=process)


# Answers 200 to every GET, and exits after the first if asked: stands in for the MLflow server.
FAKE_SERVER = """
import http.server, sys, threading
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        if sys.argv[2] == "once":
            threading.Thread(target=server.shutdown).start()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
server.serve_forever()
"""


def fake_serve_ui(
    monkeypatch: pytest.MonkeyPatch, mode: str
) -> tuple[list[tuple[Any, ...]], list[subprocess.Popen]]:
    """Replace the MLflow server by FAKE_SERVER; return the calls made and processes started."""
    calls: list[tuple[Any, ...]] = []
    started: list[subprocess.Popen] = []

    def serve(uri: str, host: str, port: int, allow_remote: bool) -> subprocess.Popen:
        calls.append((uri, host, port, allow_remote))
        command = [sys.executable, "-c", FAKE_SERVER, str(port), mode]
        started.append(subprocess.Popen(command, start_new_session=True))
        return started[-1]

    monkeypatch.setattr(ui, "serve_ui", serve)
    return calls, started


@pytest.mark.parametrize(("host", "allow_remote"), [(None, False), ("0.0.0.0", True)])
def test_run_ui_prints_address_and_store(
    host: str | None,
    allow_remote: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    calls, _ = fake_serve_ui(monkeypatch, "once")
    store = "sqlite:////tmp/somewhere/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    port = free_port()
    assert ui.run_ui(host=host, port=port) == 0
    bind = host or "127.0.0.1"
    assert calls == [(store, bind, port, allow_remote)]
    assert f"MLflow UI: http://{bind}:{port} (store: {store})" in capsys.readouterr().out


def test_sigterm_stops_run_ui_and_its_server(monkeypatch: pytest.MonkeyPatch) -> None:
    _, started = fake_serve_ui(monkeypatch, "forever")
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    assert ui.run_ui(port=free_port(), tracking_uri="sqlite:////tmp/unused.db") == 0
    timer.join()
    assert group_is_gone(started[0].pid)


def test_run_ui_prints_each_experiments_runs_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Besides the address, the runs-table URL of each experiment (MLflow 3's runs route)."""
    from mlflow import MlflowClient

    from ntng_ray.track.mlflow_run import ensure_experiment

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment_id = ensure_experiment(MlflowClient(store), "my-sweep", None)
    fake_serve_ui(monkeypatch, "once")
    port = free_port()
    assert ui.run_ui(port=port, tracking_uri=store) == 0
    out = capsys.readouterr().out
    assert f"my-sweep: http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs" in out
    assert "Default" not in out


def test_experiment_links_make_no_store(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    assert ui.experiment_links(store, "http://127.0.0.1:5000") == []
    assert not (tmp_path / "none").exists()
