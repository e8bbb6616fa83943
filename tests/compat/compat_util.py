"""Small helpers shared by the compatibility tests."""

from __future__ import annotations

import time

from azure.keyvault.administration import KeyVaultAccessControlClient, KeyVaultRoleScope

ADMIN_SUBJECT = "local-admin"
ADMIN_ROLE_ID = "a290e904-7015-4bba-90c8-60543313cdb4"
CRYPTO_OFFICER_ROLE_ID = "515eb02d-2335-4d2d-92f2-b1cbdf9c3778"
CRYPTO_USER_ROLE_ID = "21dbd100-6940-42c2-9190-5d6cb909625b"
BUILT_IN_ROLES = {
    ADMIN_ROLE_ID: "Managed HSM Administrator",
    CRYPTO_OFFICER_ROLE_ID: "Managed HSM Crypto Officer",
    CRYPTO_USER_ROLE_ID: "Managed HSM Crypto User",
    "4bd23610-cdcf-4971-bdee-bdc562cc28e4": "Managed HSM Policy Administrator",
    "2c18b078-7c48-4d3a-af88-5a3a1b3f82b3": "Managed HSM Crypto Auditor",
    "33413926-3206-4cdd-b39a-83574fe37a17": "Managed HSM Crypto Service Encryption User",
    "21dbd100-6940-42c2-9190-5d6cb909625c": "Managed HSM Crypto Service Release User",
    "7b127d3c-77bd-4e3e-bbe0-dbb8971fa7f8": "Managed HSM Backup",
    "6efe6056-5259-49d2-8b3d-d3d73544b20b": "Managed HSM Restore",
}


def role_definition_id(access_control_client: KeyVaultAccessControlClient, guid: str) -> str:
    """The full id of a built-in role definition, as the service returns it."""
    definition = access_control_client.get_role_definition(KeyVaultRoleScope.GLOBAL, guid)
    assert definition.name == guid
    return definition.id


def wait_until(condition, what: str, deadline_s: float = 15.0, interval_s: float = 0.1):
    """Poll `condition()` until it returns a truthy value or the deadline passes."""
    end = time.monotonic() + deadline_s
    last_exc = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported below
            last_exc = exc
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s}s waiting for {what}; last error: {last_exc!r}")
        time.sleep(interval_s)


def status_text(status) -> str:
    """An operation status as the service spelled it ("Success"), whether the SDK gives a str or an enum."""
    return str(getattr(status, "value", status))
