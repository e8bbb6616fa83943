"""Security domain through `azure-keyvault-securitydomain`: the download that activated the
session's pool, the returned file (Keystead's own `keystead/sd/1` format inside Azure's
envelope, docs/security-domain.md) checked with the custodians' keys, a fresh pool refusing key
operations until activated, and recovery of that pool by upload (transfer blob built with
`kubectl hsm sd transfer`), after which a key backup from the first pool restores into it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.administration import KeyVaultAccessControlClient, KeyVaultRoleScope
from azure.keyvault.keys import KeyClient, KeyCurveName
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from azure.keyvault.securitydomain import SecurityDomainClient
from azure.keyvault.securitydomain.models import CertificateInfo, SecurityDomain
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature

import sd_helpers
from compat_util import ADMIN_SUBJECT, CRYPTO_USER_ROLE_ID, role_definition_id, status_text, wait_until
from keystead_pool import KUBECTL_HSM_BIN, start_pool, stop_pool


def test_download_activated_the_pool(activation):
    assert activation.poller_status == "Success"
    assert activation.download_status == "Success"


def test_security_domain_file(activation):
    sd = activation.sd
    assert sd["version"] == "keystead/sd/1"
    assert sd["quorum"] == 2
    assert sd["enc"] == "A256GCM"
    assert sd["fingerprint"] and sd["domain_id"]
    shares = sd["shares"]
    assert [s["x5t_256"] for s in shares] == [c.x5t_256 for c in activation.custodians]
    xs = set()
    for custodian, share in zip(activation.custodians, shares):
        assert share["alg"] == "RSA-OAEP-256"
        assert share["public_key_sha256"] == sd_helpers.spki_sha256(custodian)
        plain = sd_helpers.decrypt_share(custodian, sd, share)  # only this custodian's key opens it
        assert len(plain) == 36 and plain[0] == 1, "share plaintext is 0x01 | m | n | x | y[32]"
        assert (plain[1], plain[2]) == (2, 3)
        xs.add(plain[3])
    assert len(xs) == 3, "each custodian holds a different share"
    other = activation.custodians[0]
    with pytest.raises(ValueError):
        sd_helpers.decrypt_share(other, sd, shares[1])


def test_download_needs_three_certificates(pool, admin_credential, activation):
    client = SecurityDomainClient(pool.endpoint, admin_credential, **pool.client_kwargs())
    two = [sd_helpers.make_custodian(f"too-few-{i}") for i in range(2)]
    with pytest.raises(HttpResponseError) as err:
        client.begin_download(
            CertificateInfo(certificates=[c.jwk() for c in two], required=2), skip_activation_polling=True
        ).result()
    assert err.value.status_code == 400


def _transfer_key_text(result) -> str:
    raw = result.transfer_key
    if isinstance(raw, str):
        return raw
    return json.dumps(dict(raw))


@pytest.fixture
def fresh_pool():
    p = start_pool("fresh")
    yield p
    rc = stop_pool(p)
    assert rc == 0, f"the fresh pool exited with {rc} after SIGTERM"


def _kubectl_hsm_has(*subcommand: str) -> bool:
    if not KUBECTL_HSM_BIN.exists():
        return False
    out = subprocess.run([str(KUBECTL_HSM_BIN), *subcommand, "--help"], capture_output=True, timeout=30)
    return out.returncode == 0


def test_fresh_pool_is_not_activated(fresh_pool, unique_name):
    admin = fresh_pool.admin_credential()
    kwargs = fresh_pool.client_kwargs()
    rbac = KeyVaultAccessControlClient(fresh_pool.endpoint, admin, **kwargs)
    keys = KeyClient(fresh_pool.endpoint, admin, **kwargs)
    try:
        rbac.create_role_assignment(
            KeyVaultRoleScope.GLOBAL, role_definition_id(rbac, CRYPTO_USER_ROLE_ID), ADMIN_SUBJECT
        )
        assigned = True
    except HttpResponseError as exc:  # role management may itself wait for activation
        assert exc.status_code == 403 and "NotActivated" in str(exc), str(exc)
        assigned = False
    with pytest.raises(HttpResponseError) as err:
        keys.create_ec_key(unique_name("early"), curve=KeyCurveName.p_256, hardware_protected=True)
    assert err.value.status_code == 403
    if assigned:
        assert "NotActivated" in str(err.value), str(err.value)
    sd_client = SecurityDomainClient(fresh_pool.endpoint, admin, **kwargs)
    assert status_text(sd_client.get_download_status().status) != "Success"


def test_upload_recovers_a_fresh_pool(fresh_pool, activation, key_client, unique_name):
    # Never skipped: the offline transfer step must exist (a missing one is a failure).
    assert _kubectl_hsm_has("sd", "transfer"), f"{KUBECTL_HSM_BIN} sd transfer --help failed"
    source = key_client.create_ec_key(unique_name("cross"), curve=KeyCurveName.p_256, hardware_protected=True)
    backup = key_client.backup_key(source.name)

    admin = fresh_pool.admin_credential()
    kwargs = fresh_pool.client_kwargs()
    sd_client = SecurityDomainClient(fresh_pool.endpoint, admin, **kwargs)
    transfer_key = _transfer_key_text(sd_client.get_transfer_key())
    assert json.loads(transfer_key).get("x5c"), "the transfer key carries no x5c exchange certificate"

    with tempfile.TemporaryDirectory(prefix="keystead-compat-sd-") as work:
        sd_file = f"{work}/sd.json"
        with open(sd_file, "w") as f:
            f.write(activation.sd_text)
        with open(f"{work}/transfer-key.json", "w") as f:
            f.write(transfer_key)
        key_args = []
        for i, custodian in enumerate(activation.custodians[1:]):
            _cer, key = sd_helpers.write_custodian_files(custodian, work, f"custodian{i}")
            key_args += ["--key", key]
        out = subprocess.run(
            [str(KUBECTL_HSM_BIN), "sd", "transfer", "--domain", sd_file, *key_args,
             "--exchange-key", f"{work}/transfer-key.json", "--out", f"{work}/blob.json"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, f"kubectl hsm sd transfer failed: {out.stderr}"
        with open(f"{work}/blob.json") as f:
            blob = f.read()

    poller = sd_client.begin_upload(SecurityDomain(value=blob), polling_interval=0.2)
    poller.result(timeout=120)
    assert status_text(poller.status()) == "Success"
    assert status_text(sd_client.get_upload_status().status) == "Success"

    # active now: the admin gives itself key permissions and restores the first pool's backup here
    rbac = KeyVaultAccessControlClient(fresh_pool.endpoint, admin, **kwargs)
    rbac.create_role_assignment(KeyVaultRoleScope.GLOBAL, role_definition_id(rbac, CRYPTO_USER_ROLE_ID), ADMIN_SUBJECT)
    keys = KeyClient(fresh_pool.endpoint, admin, **kwargs)
    restored = wait_until(lambda: keys.restore_key_backup(backup), "restore of the backup in the recovered pool")
    assert restored.name == source.name
    assert restored.key.x == source.key.x and restored.key.y == source.key.y

    digest = hashlib.sha256(b"signed after the move").digest()
    sig = CryptographyClient(restored.id, admin, **kwargs).sign(SignatureAlgorithm.es256, digest).signature
    public = ec.EllipticCurvePublicNumbers(
        int.from_bytes(source.key.x, "big"), int.from_bytes(source.key.y, "big"), ec.SECP256R1()
    ).public_key()
    public.verify(
        encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")),
        digest,
        ec.ECDSA(Prehashed(hashes.SHA256())),
    )
