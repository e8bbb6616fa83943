"""Start and stop a local Keystead pool (`keystead-partition local`) for the compatibility suite.

Nothing here sleeps for a fixed time: every wait polls a condition until a deadline.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from azure.core.credentials import AccessToken

REPO_ROOT = Path(__file__).resolve().parents[2]
PARTITION_BIN = Path(
    os.environ.get("KEYSTEAD_PARTITION_BIN", REPO_ROOT / "target" / "debug" / "keystead-partition")
)
KUBECTL_HSM_BIN = Path(os.environ.get("KUBECTL_HSM_BIN", REPO_ROOT / "target" / "debug" / "kubectl-hsm"))

START_DEADLINE_S = 90.0
STOP_DEADLINE_S = 20.0
POLL_INTERVAL_S = 0.1


class PoolError(RuntimeError):
    pass


def _jwt_expiry(token: str) -> int:
    """The `exp` claim of a JWT (read without verification: the server verifies it)."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return int(json.loads(base64.urlsafe_b64decode(payload))["exp"])
    except (IndexError, ValueError, KeyError) as exc:
        raise PoolError(f"the token is not a JWT with an exp claim: {exc}") from exc


class StaticTokenCredential:
    """A `TokenCredential` that hands out one bearer token minted by the local pool's issuer."""

    def __init__(self, token: str, subject: str):
        self._token = token.strip()
        self.subject = subject
        self._expires_on = _jwt_expiry(self._token)
        self.requested_scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes, claims=None, tenant_id=None, enable_cae=False, **kwargs):
        self.requested_scopes.append(tuple(scopes))
        return AccessToken(self._token, self._expires_on)

    def __repr__(self) -> str:  # never show the token
        return f"StaticTokenCredential(subject={self.subject!r})"


class LocalPool:
    """One `keystead-partition local` process and its directory."""

    def __init__(self, name: str):
        self.name = name
        self.dir = Path(tempfile.mkdtemp(prefix=f"keystead-compat-{name}-"))
        self.log_path = self.dir / "pool.log"
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "LocalPool":
        if not PARTITION_BIN.exists():
            raise PoolError(
                f"{PARTITION_BIN} does not exist; run `cargo build -p keystead-partition -p kubectl-hsm` first"
            )
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [str(PARTITION_BIN), "local", "--dir", str(self.dir / "pool"), "--name", self.name],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so a hard kill reaches the partitions too
            )
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _alive_or_raise(self, what: str) -> None:
        assert self.proc is not None
        rc = self.proc.poll()
        if rc is not None:
            raise PoolError(f"keystead-partition local exited with status {rc} while {what}:\n{self.log_tail()}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_S
        pool_json = self.dir / "pool" / "pool.json"
        while True:
            self._alive_or_raise("waiting for pool.json")
            try:
                self.info = json.loads(pool_json.read_text())
                if self.info.get("endpoints"):
                    break
            except (FileNotFoundError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise PoolError(f"{pool_json} did not appear within {START_DEADLINE_S}s:\n{self.log_tail()}")
            time.sleep(POLL_INTERVAL_S)
        ctx = ssl.create_default_context(cafile=self.info["caFile"])
        for ep in self.info["endpoints"]:
            while True:
                self._alive_or_raise(f"waiting for {ep}/healthz")
                try:
                    with urllib.request.urlopen(f"{ep}/healthz", context=ctx, timeout=2) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                    pass
                if time.monotonic() > deadline:
                    raise PoolError(f"{ep}/healthz did not answer 200 within {START_DEADLINE_S}s:\n{self.log_tail()}")
                time.sleep(POLL_INTERVAL_S)

    def stop(self) -> int | None:
        """SIGTERM, wait up to STOP_DEADLINE_S, then SIGKILL the process group. Returns the exit status."""
        if self.proc is None:
            return None
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=STOP_DEADLINE_S)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                rc = self.proc.wait(timeout=STOP_DEADLINE_S)
        return rc

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, limit: int = 20000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return "(no log)"
        return data[-limit:].decode("utf-8", "replace")

    # -- access ----------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return self.info["endpoints"][0]

    @property
    def ca_file(self) -> str:
        return self.info["caFile"]

    @property
    def pool_json(self) -> Path:
        return self.dir / "pool" / "pool.json"

    def admin_credential(self) -> StaticTokenCredential:
        return StaticTokenCredential(Path(self.info["adminTokenFile"]).read_text(), "local-admin")

    def mint_credential(self, subject: str, ttl_minutes: int = 60) -> StaticTokenCredential:
        if not KUBECTL_HSM_BIN.exists():
            raise PoolError(f"{KUBECTL_HSM_BIN} does not exist; run `cargo build -p kubectl-hsm` first")
        out = subprocess.run(
            [
                str(KUBECTL_HSM_BIN),
                "--pool",
                str(self.pool_json),
                "token",
                "--subject",
                subject,
                "--ttl-minutes",
                str(ttl_minutes),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if out.returncode != 0:
            raise PoolError(f"kubectl-hsm token failed ({out.returncode}): {out.stderr.strip()}")
        token = out.stdout.strip().splitlines()[-1].strip() if out.stdout.strip() else ""
        return StaticTokenCredential(token, subject)

    def client_kwargs(self) -> dict:
        return {"verify_challenge_resource": False, "connection_verify": self.ca_file}


# Logs of every pool started in this run, captured before its directory is removed
# (conftest prints them when the run fails).
POOL_LOGS: dict[str, str] = {}


def start_pool(name: str) -> LocalPool:
    pool = LocalPool(name)
    try:
        pool.start()
    except BaseException:
        POOL_LOGS[name] = pool.log_tail()
        pool.cleanup()
        raise
    return pool


def stop_pool(pool: LocalPool) -> int | None:
    try:
        rc = pool.stop()
    finally:
        POOL_LOGS[pool.name] = pool.log_tail()
        pool.cleanup()
    return rc
