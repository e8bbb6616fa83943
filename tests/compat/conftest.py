"""Fixtures of the Azure SDK compatibility suite: one local pool per session, activated through
`azure-keyvault-securitydomain`, and the official Azure clients pointed at it."""

from __future__ import annotations

import json
import uuid

import pytest
from azure.keyvault.administration import (
    KeyVaultAccessControlClient,
    KeyVaultDataAction,
    KeyVaultPermission,
    KeyVaultRoleScope,
)
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient
from azure.keyvault.securitydomain import SecurityDomainClient
from azure.keyvault.securitydomain.models import CertificateInfo

from compat_util import status_text, ADMIN_SUBJECT, CRYPTO_OFFICER_ROLE_ID, CRYPTO_USER_ROLE_ID, role_definition_id
from keystead_pool import POOL_LOGS, LocalPool, StaticTokenCredential, start_pool, stop_pool
from sd_helpers import Custodian, make_custodian


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if exitstatus != 0 and POOL_LOGS:
        for name, log in POOL_LOGS.items():
            terminalreporter.section(f"keystead-partition local ({name}) output")
            terminalreporter.write_line(log)


class Activation:
    """What the session learned while activating the pool."""

    def __init__(self, sd_text: str, custodians: list[Custodian], poller_status: str, download_status: str):
        self.sd_text = sd_text
        self.sd = json.loads(sd_text)
        self.custodians = custodians
        self.poller_status = poller_status
        self.download_status = download_status


def activate(pool: LocalPool, credential: StaticTokenCredential, custodians: list[Custodian]) -> Activation:
    sd_client = SecurityDomainClient(pool.endpoint, credential, **pool.client_kwargs())
    poller = sd_client.begin_download(
        CertificateInfo(certificates=[c.jwk() for c in custodians], required=2),
        polling_interval=0.2,
    )
    security_domain = poller.result(timeout=120)
    assert poller.done()
    status = status_text(poller.status())
    assert status == "Success", f"download poller ended with status {status!r}"
    text = security_domain.value
    assert isinstance(text, str) and text, "the download response carries no security domain"
    parsed = json.loads(text)  # the raw JSON text of the security domain, as `az` writes it to disk
    assert isinstance(parsed, dict)
    download_status = sd_client.get_download_status()
    return Activation(text, custodians, status, status_text(download_status.status))


@pytest.fixture(scope="session")
def pool():
    p = start_pool("compat")
    yield p
    rc = stop_pool(p)
    assert rc == 0, f"keystead-partition local exited with {rc} after SIGTERM"


@pytest.fixture(scope="session")
def admin_credential(pool) -> StaticTokenCredential:
    return pool.admin_credential()


@pytest.fixture(scope="session")
def custodians() -> list[Custodian]:
    return [make_custodian(f"keystead-compat-custodian-{i}") for i in range(3)]


@pytest.fixture(scope="session")
def activation(pool, admin_credential, custodians) -> Activation:
    return activate(pool, admin_credential, custodians)


@pytest.fixture(scope="session")
def access_control_client(pool, admin_credential, activation) -> KeyVaultAccessControlClient:
    return KeyVaultAccessControlClient(pool.endpoint, admin_credential, **pool.client_kwargs())


@pytest.fixture(scope="session")
def key_roles(access_control_client) -> list:
    """The Administrator has no key permissions (as in Azure): like `az keyvault role assignment
    create --assignee <self>`, the session's admin gives itself Crypto User and Crypto Officer."""
    assignments = []
    for guid in (CRYPTO_USER_ROLE_ID, CRYPTO_OFFICER_ROLE_ID):
        assignments.append(
            access_control_client.create_role_assignment(
                KeyVaultRoleScope.GLOBAL, role_definition_id(access_control_client, guid), ADMIN_SUBJECT
            )
        )
    return assignments


@pytest.fixture(scope="session")
def key_client(pool, admin_credential, key_roles) -> KeyClient:
    return KeyClient(pool.endpoint, admin_credential, **pool.client_kwargs())


@pytest.fixture(scope="session")
def remote_credential(pool, access_control_client, activation) -> StaticTokenCredential:
    """A principal that may use keys (encrypt, decrypt, wrap, unwrap, sign, verify) but not
    read them: a custom role without `keys/read`. The SDK's CryptographyClient, refused the
    GET of the key (403), does every operation on the server — as it does in Azure for such a
    principal, with no private client attribute set."""
    actions = [
        KeyVaultDataAction.ENCRYPT_HSM_KEY,
        KeyVaultDataAction.DECRYPT_HSM_KEY,
        KeyVaultDataAction.WRAP_HSM_KEY,
        KeyVaultDataAction.UNWRAP_HSM_KEY,
        KeyVaultDataAction.SIGN_HSM_KEY,
        KeyVaultDataAction.VERIFY_HSM_KEY,
    ]
    role = access_control_client.set_role_definition(
        KeyVaultRoleScope.GLOBAL,
        role_name=f"compat remote crypto {uuid.uuid4().hex[:8]}",
        permissions=[KeyVaultPermission(data_actions=actions)],
    )
    subject = f"remote-crypto-{uuid.uuid4().hex[:8]}"
    access_control_client.create_role_assignment(KeyVaultRoleScope.GLOBAL, role.id, subject)
    return pool.mint_credential(subject)


@pytest.fixture(scope="session")
def crypto_client(pool, admin_credential, key_roles, remote_credential):
    """Factory: `crypto_client(key_or_id, credential=None, remote_only=False)`.

    With `remote_only=True` the client uses [`remote_credential`], which may not read the key,
    so the SDK sends every operation (also encrypt, wrap and verify, which it would otherwise do
    locally) to the server."""

    def make(key, credential=None, remote_only: bool = False) -> CryptographyClient:
        if remote_only:
            assert credential is None, "remote_only uses the remote_credential principal"
            credential = remote_credential
        return CryptographyClient(key if isinstance(key, str) else key.id, credential or admin_credential,
                                  **pool.client_kwargs())

    return make


@pytest.fixture
def unique_name():
    """`unique_name("rsa")` -> "rsa-<12 hex>": key and principal names no other test uses."""

    def make(prefix: str = "k") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:12]}"

    return make


@pytest.fixture
def principal(pool, activation, unique_name):
    """Factory: a new principal (no roles) -> (principal_id, credential)."""

    def make(prefix: str = "user") -> tuple[str, StaticTokenCredential]:
        subject = unique_name(prefix)
        return subject, pool.mint_credential(subject)

    return make


@pytest.fixture
def second_principal(principal):
    return principal("second")


@pytest.fixture(scope="session")
def client_kwargs(pool) -> dict:
    return pool.client_kwargs()
