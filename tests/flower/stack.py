"""Real Flower processes on loopback for tests: SuperLink, SuperNodes and ``flwr run``.

Every process is started in its own session and remembered; :meth:`Stack.close` stops
each one together with every descendant it spawned (SuperExec, ServerApp, ClientApp,
simulation and Ray processes), first with SIGTERM, then SIGKILL. Ports are free ports on
127.0.0.1 chosen at start; each process gets its own ``FLWR_HOME`` under the test's
temporary directory, one torch/BLAS thread, and no telemetry, update check or runtime
dependency installation (nothing leaves the machine).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float) -> None:
    """Wait until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s")


def _children() -> dict[int, list[int]]:
    """Parent pid -> child pids, from /proc."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        out.setdefault(ppid, []).append(int(entry))
    return out


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (parents first)."""
    tree = _children()
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(tree.get(p, []))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (exists and is not a zombie)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def exists(pid: int) -> bool:
    """Whether ``pid`` has a process table entry (running, or a zombie not yet reaped)."""
    return Path(f"/proc/{pid}").exists()


def stop_tree(popen: subprocess.Popen[bytes], sig: int, timeout: float) -> bool:
    """Signal the process tree of ``popen`` leaves first, waiting for each to be reaped
    by its parent before signalling the parent (so no child is orphaned and left a
    zombie). Returns True when the whole tree is gone within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        popen.poll()  # reap the root when it is done
        tree = [p for p in descendants(popen.pid) if exists(p)]
        if not tree:
            return True
        kids = _children()
        # A parent whose children are all dead (or zombies it has not reaped within the
        # wait below) is signalled next.
        leaves = [p for p in tree if not any(alive(c) for c in kids.get(p, []))]
        for p in leaves:
            if alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, sig)
        level_deadline = min(deadline, time.monotonic() + 3)
        while time.monotonic() < level_deadline and any(exists(p) for p in leaves):
            popen.poll()
            time.sleep(0.05)
    popen.poll()
    return not any(exists(p) for p in descendants(popen.pid))


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 / localhost: (ca.pem, server.pem,
    server.key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmoe test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])


@dataclass
class Stack:
    """The processes of one test; use as a context manager (always closed)."""

    root: Path
    tls: tuple[Path, Path, Path] | None = None
    procs: list[Proc] = field(default_factory=list)
    link_port: int = 0

    def env(self, home: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("FLWR_", "RAY_")) and k != "PYTHONPATH"
        }
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            FLWR_HOME=str(self.root / home),
            FLWR_TELEMETRY_ENABLED="0",
            FLWR_DISABLE_UPDATE_CHECK="1",
            FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
            RAY_USAGE_STATS_ENABLED="0",
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            OPENBLAS_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        return env

    def start(self, name: str, args: list[str], home: str) -> Proc:
        log = self.root / f"{name}.log"
        (self.root / home).mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            popen = subprocess.Popen(
                args,
                cwd=self.root,
                env=self.env(home),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def superlink(self, simulation: bool = False) -> Proc:
        self.link_port = free_port()
        args = [str(BIN / "flower-superlink"), "--port", str(self.link_port)]
        args += ["--host", "127.0.0.1", "--disable-runtime-dependency-installation"]
        args += self._server_tls()
        if simulation:
            args.append("--simulation")
        proc = self.start("superlink", args, "superlink-home")
        wait_port(self.link_port, 60)
        return proc

    def _server_tls(self) -> list[str]:
        if self.tls is None:
            return ["--insecure"]
        ca, cert, key = self.tls
        return [
            "--ssl-ca-certfile",
            str(ca),
            "--ssl-certfile",
            str(cert),
            "--ssl-keyfile",
            str(key),
        ]

    def _client_tls(self) -> list[str]:
        return ["--insecure"] if self.tls is None else ["--root-certificates", str(self.tls[0])]

    def supernode(self, name: str, node_config: str) -> Proc:
        args = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{self.link_port}"]
        args += ["--host", "127.0.0.1", "--port", str(free_port())]
        args += ["--node-config", node_config, *self._client_tls()]
        return self.start(name, args, f"{name}-home")

    def flower_config(self) -> None:
        """The Flower config (``$FLWR_HOME/config.toml``) of the ``flwr`` CLI."""
        home = self.root / "cli-home"
        home.mkdir(parents=True, exist_ok=True)
        conn = [f'address = "127.0.0.1:{self.link_port}"']
        conn.append(
            "insecure = true" if self.tls is None else f'root-certificates = "{self.tls[0]}"'
        )
        text = '[superlink]\ndefault = "test"\n\n[superlink.test]\n' + "\n".join(conn) + "\n"
        (home / "config.toml").write_text(text)

    def flwr_run(self, run_config: str, extra: list[str] | None = None) -> Proc:
        self.flower_config()
        args = [str(BIN / "flwr"), "run", str(REPO), "test", "--stream"]
        args += ["--run-config", run_config, *(extra or [])]
        return self.start("flwr-run", args, "cli-home")

    def kill(self, proc: Proc) -> None:
        """SIGKILL ``proc`` and everything it started (a node dying)."""
        if not stop_tree(proc.popen, signal.SIGKILL, 30):
            raise AssertionError(f"could not kill {proc.name}")

    def close(self) -> list[str]:
        """Stop every process and its descendants (SIGTERM, then SIGKILL); returns the
        names of those that needed SIGKILL or survived it."""
        stubborn: list[str] = []
        for p in reversed(self.procs):
            if stop_tree(p.popen, signal.SIGTERM, 20):
                continue
            stubborn.append(p.name)
            if not stop_tree(p.popen, signal.SIGKILL, 10):
                stubborn.append(f"{p.name} (survived SIGKILL)")
        return stubborn

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, procs: list[Proc]) -> None:
    """Poll ``predicate`` until true; on timeout fail with the processes' log tails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    logs = "\n\n".join(f"--- {p.name} ---\n{p.tail()}" for p in procs)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def watch(proc: Proc, needle: str, timeout: float, procs: list[Proc]) -> None:
    """Wait until ``needle`` appears in ``proc``'s log; fail at once (with the logs) if
    ``proc`` ends without writing it."""

    def seen() -> bool:
        try:
            return needle in proc.log.read_text(errors="replace")
        except OSError:
            return False

    what = f"{needle!r} in {proc.name}'s output"
    wait_for(lambda: seen() or proc.popen.poll() is not None, timeout, what, procs)
    if not seen():
        logs = "\n\n".join(f"--- {p.name} ---\n{p.tail()}" for p in procs)
        raise AssertionError(f"{proc.name} ended without writing {needle!r}\n{logs}")
