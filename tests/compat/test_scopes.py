"""The token scope the official SDKs request: the resource the pool's 401 challenge names
(the pool audience) with `/.default`, and nothing else."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from azure.keyvault.administration import KeyVaultAccessControlClient, KeyVaultRoleScope
from azure.keyvault.keys import KeyClient, KeyCurveName

from keystead_pool import StaticTokenCredential


def _aud(token: str) -> str:
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    aud = json.loads(base64.urlsafe_b64decode(payload))["aud"]
    return aud[0] if isinstance(aud, list) else aud


def test_sdks_request_the_pool_audience_scope(pool, activation, key_roles, unique_name):
    token = Path(pool.info["adminTokenFile"]).read_text().strip()
    audience = _aud(token)
    assert not audience.startswith("https://managedhsm.azure.net"), (
        f"the pool's audience is Azure's own resource: {audience}"
    )
    credential = StaticTokenCredential(token, "local-admin")
    keys = KeyClient(pool.endpoint, credential, **pool.client_kwargs())
    key = keys.create_ec_key(unique_name("scope"), curve=KeyCurveName.p_256, hardware_protected=True)
    assert keys.get_key(key.name).id == key.id
    rbac = KeyVaultAccessControlClient(pool.endpoint, credential, **pool.client_kwargs())
    assert list(rbac.list_role_definitions(KeyVaultRoleScope.GLOBAL))
    assert credential.requested_scopes, "the SDK never asked for a token"
    want = (f"{audience.rstrip('/')}/.default",)
    assert set(credential.requested_scopes) == {want}, credential.requested_scopes
