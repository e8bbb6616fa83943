"""Full backup and restore through the official `KeyVaultBackupClient` against a local pool,
with the Azurite (Azure Blob emulator) store started by scripts/start-object-stores.sh.

A pool of its own (not the session pool): a full restore replaces every key of the pool."""

from __future__ import annotations

import base64
import hashlib
import hmac
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.administration import KeyVaultAccessControlClient, KeyVaultBackupClient, KeyVaultRoleScope
from azure.keyvault.keys import KeyClient
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm

from compat_util import ADMIN_SUBJECT, CRYPTO_OFFICER_ROLE_ID, CRYPTO_USER_ROLE_ID, role_definition_id
from conftest import activate
from keystead_pool import start_pool, stop_pool

ROOT = Path(__file__).resolve().parents[2]
# The emulator's published development account key (not a secret).
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@pytest.fixture(scope="module")
def azurite_container() -> str:
    out = subprocess.run(["bash", str(ROOT / "scripts" / "start-object-stores.sh")], capture_output=True,
                         text=True, timeout=180, check=False)
    assert out.returncode == 0, f"start-object-stores.sh failed: {out.stderr}"
    env = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return env["KEYSTEAD_TEST_AZURITE_URL"]


@pytest.fixture(scope="module")
def backup_pool(custodians):
    p = start_pool("backup")
    activate(p, p.admin_credential(), custodians)
    yield p
    rc = stop_pool(p)
    assert rc == 0, f"keystead-partition local exited with {rc} after SIGTERM"


@pytest.fixture(scope="module")
def clients(backup_pool):
    cred = backup_pool.admin_credential()
    kw = backup_pool.client_kwargs()
    acl = KeyVaultAccessControlClient(backup_pool.endpoint, cred, **kw)
    for guid in (CRYPTO_USER_ROLE_ID, CRYPTO_OFFICER_ROLE_ID):
        acl.create_role_assignment(KeyVaultRoleScope.GLOBAL, role_definition_id(acl, guid), ADMIN_SUBJECT)
    return (KeyVaultBackupClient(backup_pool.endpoint, cred, **kw), KeyClient(backup_pool.endpoint, cred, **kw),
            cred, kw)


def container_sas(container_url: str, permissions: str = "racwdl") -> str:
    """A service SAS for the Azurite container (version 2020-12-06 string-to-sign)."""
    account, container = container_url.rstrip("/").split("/")[-2:]
    expiry = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    version = "2020-12-06"
    to_sign = "\n".join([permissions, "", expiry, f"/blob/{account}/{container}", "", "", "", version, "c", "",
                         "", "", "", "", "", ""])
    sig = base64.b64encode(hmac.new(base64.b64decode(AZURITE_KEY), to_sign.encode(), hashlib.sha256).digest())
    return f"sv={version}&sp={permissions}&se={quote(expiry)}&sr=c&sig={quote(sig.decode(), safe='')}"


def purge(key_client: KeyClient, name: str) -> None:
    key_client.begin_delete_key(name).result()
    key_client.purge_deleted_key(name)


def test_full_backup_and_restore_with_the_sdk(clients, azurite_container):
    backup_client, key_client, cred, kw = clients
    name = f"bk-{uuid.uuid4().hex[:10]}"
    key = key_client.create_ec_key(name, curve="P-256", tags={"purpose": "backup-test"})
    digest = hashlib.sha256(b"before the backup").digest()
    sig = CryptographyClient(key.id, cred, **kw).sign(SignatureAlgorithm.es256, digest).signature

    poller = backup_client.begin_backup(azurite_container, sas_token=container_sas(azurite_container),
                                        _polling_interval=0.2)
    result = poller.result(timeout=120)
    assert poller.status().lower() == "succeeded"
    assert result.folder_url.startswith(azurite_container + "/")

    # Lose the key entirely, and add one the backup does not hold.
    purge(key_client, name)
    later = f"later-{uuid.uuid4().hex[:10]}"
    key_client.create_ec_key(later, curve="P-256")

    restore = backup_client.begin_restore(result.folder_url, sas_token=container_sas(azurite_container),
                                          _polling_interval=0.2)
    restore.result(timeout=120)
    assert restore.status().lower() == "succeeded"
    back = key_client.get_key(name)
    assert back.properties.version == key.properties.version
    assert back.properties.tags == {"purpose": "backup-test"}
    assert back.key.x == key.key.x
    verified = CryptographyClient(back.id, cred, **kw).verify(SignatureAlgorithm.es256, digest, sig)
    assert verified.is_valid
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(later)


def test_selective_restore_with_managed_identity(clients, azurite_container):
    backup_client, key_client, _, _ = clients
    name = f"sel-{uuid.uuid4().hex[:10]}"
    first = key_client.create_rsa_key(name, size=2048)
    second = key_client.create_rsa_key(name, size=2048)
    # use_managed_identity: the pool uses its own credentials (here the emulator's account).
    result = backup_client.begin_backup(azurite_container, use_managed_identity=True,
                                        _polling_interval=0.2).result(timeout=120)
    purge(key_client, name)
    poller = backup_client.begin_restore(result.folder_url, key_name=name, use_managed_identity=True,
                                         _polling_interval=0.2)
    poller.result(timeout=120)
    versions = {p.version for p in key_client.list_properties_of_key_versions(name)}
    assert versions == {first.properties.version, second.properties.version}


def test_restore_of_a_missing_folder_fails_cleanly(clients, azurite_container):
    backup_client, key_client, _, _ = clients
    before = sorted(p.name for p in key_client.list_properties_of_keys())
    poller = backup_client.begin_restore(f"{azurite_container}/no-such-backup", use_managed_identity=True,
                                         _polling_interval=0.2)
    with pytest.raises(HttpResponseError) as err:
        poller.result(timeout=120)
    assert "does not exist" in str(err.value)
    assert sorted(p.name for p in key_client.list_properties_of_keys()) == before
