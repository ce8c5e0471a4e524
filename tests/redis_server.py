"""A real redis-server for tests: started in a tmp dir on a free 127.0.0.1 port or a unix
socket, without persistence, stopped at teardown, restartable on the same address.

``RedisServer(directory).start()``; ``.url`` (``redis://127.0.0.1:PORT/0``, or
``unix://...?db=0``), ``.client()`` a raw redis-py client, ``.stop()``,
``.restart()`` (stopped and started again, empty, same address); ``tls=True``
serves TLS only (``rediss://``, a certificate for 127.0.0.1 from a CA of its
own, ``.ca_file``). A missing
binary fails the test with how to install it: the Redis store is tested on a
real server or not at all.
"""

from __future__ import annotations

import ctypes
import datetime
import ipaddress
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

START_TIMEOUT = 10.0  # seconds a server may take to answer PING


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_tls_files(directory: Path) -> None:
    """A CA (``ca.pem``) and a server certificate for IP 127.0.0.1 (``server.pem``/``.key``)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "zmeshlib test Redis CA")])

    def certificate(
        subject: x509.Name, key: ec.EllipticCurvePrivateKey, ca: bool
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
        else:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False,
            )
        return builder.sign(ca_key, hashes.SHA256())

    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(certificate(ca_name, ca_key, True).public_bytes(pem))
    (directory / "server.pem").write_bytes(
        certificate(server_name, server_key, False).public_bytes(pem)
    )
    (directory / "server.key").write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the process that started it ends, however it
    ends (a test process killed, a docs page's ``os._exit``), so no server is left behind."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class RedisServer:
    def __init__(self, directory: Path, *, unix: bool = False, tls: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed: the Redis store's tests run a real one. "
                "Install it (Debian/Ubuntu: apt-get install redis-server; macOS: brew install "
                "redis), or run `make test`, which installs it when run as root",
                pytrace=False,
            )
        self.binary = binary
        self.directory = directory.resolve()  # redis-server changes to --dir before it logs
        self.directory.mkdir(parents=True, exist_ok=True)
        self.unix = unix
        self.tls = tls
        self.ca_file = self.directory / "ca.pem"
        if tls:
            write_tls_files(self.directory)
        self.port = 0 if unix else free_port()
        self.socket_path = self.directory / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        if self.unix:
            return f"unix://{self.socket_path}?db=0"
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def client(self) -> Any:
        import redis

        if self.unix:
            return redis.Redis(unix_socket_path=str(self.socket_path))
        if self.tls:
            return redis.Redis(
                host="127.0.0.1", port=self.port, ssl=True, ssl_ca_certs=str(self.ca_file)
            )
        return redis.Redis(host="127.0.0.1", port=self.port)

    def start(self, *, same_address: bool = False) -> RedisServer:
        """Start the server and wait (polling PING, with a deadline) until it answers.

        Another free port is tried if this one was taken meanwhile, unless ``same_address``.
        """
        args = [
            self.binary,
            "--tls-port" if self.tls else "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.directory),
            "--logfile", str(self.directory / "redis.log"),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.unix:
            args += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.tls:
            args += [
                "--port", "0",
                "--tls-cert-file", str(self.directory / "server.pem"),
                "--tls-key-file", str(self.directory / "server.key"),
                "--tls-ca-cert-file", str(self.ca_file),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        for attempt in range(5):
            self.proc = subprocess.Popen(
                args,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )
            if self._wait_ready():
                return self
            if (
                not self.unix and not same_address and attempt < 4
            ):  # the port was taken meanwhile: another one
                self.port = free_port()
                args[2] = str(self.port)
        log_file = self.directory / "redis.log"
        log = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else "(no log)"
        pytest.fail(f"redis-server did not start on {self.url}:\n{log}", pytrace=False)

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except Exception:
                    time.sleep(0.005)  # polling a starting server, bounded by the deadline
            self.proc.kill()
            self.proc.wait()
            return False
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM: without persistence it exits at once) and wait for it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same address: an empty server."""
        self.stop()
        self.start(same_address=True)
