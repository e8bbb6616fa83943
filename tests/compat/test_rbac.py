"""Local RBAC through `azure-keyvault-administration` KeyVaultAccessControlClient, and its effect on
key operations made with `azure-keyvault-keys`."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.administration import KeyVaultAccessControlClient, KeyVaultRoleScope
from azure.keyvault.keys import KeyClient, KeyCurveName
from azure.keyvault.keys.crypto import SignatureAlgorithm

from compat_util import (
    ADMIN_ROLE_ID,
    ADMIN_SUBJECT,
    BUILT_IN_ROLES,
    CRYPTO_USER_ROLE_ID,
    role_definition_id,
    wait_until,
)

ACTION_PREFIX = "Microsoft.KeyVault/managedHsm/"


def _assert_forbidden(err: pytest.ExceptionInfo, action: str) -> None:
    exc = err.value
    assert isinstance(exc, HttpResponseError)
    assert exc.status_code == 403, f"expected 403, got {exc.status_code}: {exc.message}"
    text = str(exc)
    assert ACTION_PREFIX + action in text, f"the 403 message does not name {ACTION_PREFIX + action}: {text}"
    if exc.error is not None:
        assert exc.error.code == "Forbidden"


def _forbidden_or_none(fn) -> HttpResponseError | None:
    try:
        fn()
    except HttpResponseError as exc:
        if exc.status_code == 403:
            return exc
        raise
    return None


def test_role_definitions_are_listed(access_control_client):
    definitions = {d.name: d for d in access_control_client.list_role_definitions(KeyVaultRoleScope.GLOBAL)}
    for guid, role_name in BUILT_IN_ROLES.items():
        assert guid in definitions, f"built-in role {role_name} ({guid}) is not listed"
        d = definitions[guid]
        assert d.role_name == role_name
        assert d.role_type == "AKVBuiltInRole"
        assert d.type == "Microsoft.Authorization/roleDefinitions"
        assert d.id.endswith(f"/providers/Microsoft.Authorization/roleDefinitions/{guid}")
        assert "/" in d.assignable_scopes
    user = definitions[CRYPTO_USER_ROLE_ID]
    data_actions = {a for p in user.permissions for a in (p.data_actions or [])}
    assert ACTION_PREFIX + "keys/sign/action" in data_actions
    assert ACTION_PREFIX + "keys/create" in data_actions
    admin = definitions[ADMIN_ROLE_ID]
    admin_actions = {a for p in admin.permissions for a in (p.data_actions or [])}
    assert ACTION_PREFIX + "securitydomain/download/action" in admin_actions
    assert not any(a.startswith(ACTION_PREFIX + "keys/") for a in admin_actions)

    one = access_control_client.get_role_definition(KeyVaultRoleScope.GLOBAL, CRYPTO_USER_ROLE_ID)
    assert one.role_name == "Managed HSM Crypto User" and one.id == user.id


def test_principal_without_role_is_forbidden_then_allowed(pool, access_control_client, principal, unique_name):
    principal_id, cred = principal("norole")
    keys = KeyClient(pool.endpoint, cred, **pool.client_kwargs())
    name = unique_name("rbac")
    with pytest.raises(HttpResponseError) as err:
        keys.create_ec_key(name, curve=KeyCurveName.p_256, hardware_protected=True)
    _assert_forbidden(err, "keys/create")
    with pytest.raises(HttpResponseError) as err:
        keys.get_random_bytes(8)
    _assert_forbidden(err, "rng/action")

    assignment = access_control_client.create_role_assignment(
        KeyVaultRoleScope.KEYS, role_definition_id(access_control_client, CRYPTO_USER_ROLE_ID), principal_id
    )
    assert assignment.properties.principal_id == principal_id
    assert assignment.properties.scope == KeyVaultRoleScope.KEYS
    assert assignment.properties.role_definition_id.endswith(CRYPTO_USER_ROLE_ID)

    key = wait_until(
        lambda: keys.create_ec_key(name, curve=KeyCurveName.p_256, hardware_protected=True),
        "the role assignment to take effect",
    )
    assert key.name == name
    assert keys.get_key(name).id == key.id

    # without the assignment the principal is locked out again
    access_control_client.delete_role_assignment(KeyVaultRoleScope.KEYS, assignment.name)
    exc = wait_until(lambda: _forbidden_or_none(lambda: keys.get_key(name)), "the removal to take effect")
    assert ACTION_PREFIX + "keys/read/action" in str(exc)


def test_global_scope_assignment(pool, access_control_client, principal, unique_name):
    principal_id, cred = principal("global")
    keys = KeyClient(pool.endpoint, cred, **pool.client_kwargs())
    with pytest.raises(HttpResponseError) as err:
        keys.get_random_bytes(4)
    _assert_forbidden(err, "rng/action")
    assignment = access_control_client.create_role_assignment(
        KeyVaultRoleScope.GLOBAL, role_definition_id(access_control_client, CRYPTO_USER_ROLE_ID), principal_id
    )
    try:
        assert wait_until(lambda: len(keys.get_random_bytes(4)) == 4, "the assignment at / to take effect")
        assert keys.create_oct_key(unique_name("global"), size=256, hardware_protected=True).name
    finally:
        access_control_client.delete_role_assignment(KeyVaultRoleScope.GLOBAL, assignment.name)


def test_list_get_delete_role_assignments(access_control_client, key_roles, unique_name):
    principal_id = unique_name("listed")
    definition_id = role_definition_id(access_control_client, CRYPTO_USER_ROLE_ID)
    name = str(uuid.uuid4())
    created = access_control_client.create_role_assignment(
        KeyVaultRoleScope.GLOBAL, definition_id, principal_id, name=name
    )
    assert created.name == name
    assert created.role_assignment_id.endswith(f"/providers/Microsoft.Authorization/roleAssignments/{name}")
    assert created.type == "Microsoft.Authorization/roleAssignments"

    got = access_control_client.get_role_assignment(KeyVaultRoleScope.GLOBAL, name)
    assert got.properties.principal_id == principal_id
    assert got.properties.role_definition_id == created.properties.role_definition_id

    listed = [a for a in access_control_client.list_role_assignments(KeyVaultRoleScope.GLOBAL) if a.name == name]
    assert len(listed) == 1 and listed[0].properties.principal_id == principal_id
    # the session's own assignments are listed too
    admin_roles = {
        a.properties.role_definition_id.rsplit("/", 1)[-1]
        for a in access_control_client.list_role_assignments(KeyVaultRoleScope.GLOBAL)
        if a.properties.principal_id == ADMIN_SUBJECT
    }
    assert {ADMIN_ROLE_ID, CRYPTO_USER_ROLE_ID} <= admin_roles

    access_control_client.delete_role_assignment(KeyVaultRoleScope.GLOBAL, name)
    assert name not in {a.name for a in access_control_client.list_role_assignments(KeyVaultRoleScope.GLOBAL)}
    with pytest.raises(ResourceNotFoundError):
        access_control_client.get_role_assignment(KeyVaultRoleScope.GLOBAL, name)
    # deleting it again: the service answers 404 and the SDK treats that as already deleted
    access_control_client.delete_role_assignment(KeyVaultRoleScope.GLOBAL, name)


def test_key_scoped_assignment_grants_only_that_key(pool, key_client, access_control_client, principal, unique_name):
    mine = key_client.create_ec_key(unique_name("scoped-a"), curve=KeyCurveName.p_256, hardware_protected=True)
    other = key_client.create_ec_key(unique_name("scoped-b"), curve=KeyCurveName.p_256, hardware_protected=True)
    principal_id, cred = principal("scoped")
    scope = f"/keys/{mine.name}"
    assignment = access_control_client.create_role_assignment(
        scope, role_definition_id(access_control_client, CRYPTO_USER_ROLE_ID), principal_id
    )
    assert assignment.properties.scope == scope
    assert assignment.name in {a.name for a in access_control_client.list_role_assignments(scope)}

    from azure.keyvault.keys.crypto import CryptographyClient

    keys = KeyClient(pool.endpoint, cred, **pool.client_kwargs())
    digest = hashlib.sha256(b"scoped").digest()
    assert wait_until(lambda: keys.get_key(mine.name).id == mine.id, "the key-scoped assignment to take effect")
    sig = CryptographyClient(mine.id, cred, **pool.client_kwargs()).sign(SignatureAlgorithm.es256, digest)
    assert sig.signature

    with pytest.raises(HttpResponseError) as err:
        keys.get_key(other.name)
    _assert_forbidden(err, "keys/read/action")
    with pytest.raises(HttpResponseError) as err:
        CryptographyClient(other.id, cred, **pool.client_kwargs()).sign(SignatureAlgorithm.es256, digest)
    _assert_forbidden(err, "keys/sign/action")
    # creating a new key needs keys/create at /keys (or above): a key-scoped role does not give it
    with pytest.raises(HttpResponseError) as err:
        keys.create_ec_key(unique_name("scoped-new"), curve=KeyCurveName.p_256, hardware_protected=True)
    _assert_forbidden(err, "keys/create")
    access_control_client.delete_role_assignment(scope, assignment.name)


def test_crypto_user_cannot_manage_roles_or_purge(pool, access_control_client, key_client, principal, unique_name):
    principal_id, cred = principal("user")
    assignment = access_control_client.create_role_assignment(
        KeyVaultRoleScope.GLOBAL, role_definition_id(access_control_client, CRYPTO_USER_ROLE_ID), principal_id
    )
    try:
        rbac = KeyVaultAccessControlClient(pool.endpoint, cred, **pool.client_kwargs())
        # Crypto User may read assignments and definitions ...
        wait_until(lambda: list(rbac.list_role_definitions(KeyVaultRoleScope.GLOBAL)), "read access to roles")
        # ... but not write them
        with pytest.raises(HttpResponseError) as err:
            rbac.create_role_assignment(
                KeyVaultRoleScope.GLOBAL, role_definition_id(access_control_client, ADMIN_ROLE_ID), principal_id
            )
        _assert_forbidden(err, "roleAssignments/write/action")
        # and cannot purge a deleted key (Crypto Officer's job)
        keys = KeyClient(pool.endpoint, cred, **pool.client_kwargs())
        name = unique_name("nopurge")
        keys.create_oct_key(name, size=128, hardware_protected=True)
        keys.begin_delete_key(name).wait()
        with pytest.raises(HttpResponseError) as err:
            keys.purge_deleted_key(name)
        _assert_forbidden(err, "keys/deletedKeys/delete")
        key_client.purge_deleted_key(name)  # the session principal holds Crypto Officer
    finally:
        access_control_client.delete_role_assignment(KeyVaultRoleScope.GLOBAL, assignment.name)


def test_principal_without_role_cannot_list_assignments(pool, principal):
    _, cred = principal("nolist")
    rbac = KeyVaultAccessControlClient(pool.endpoint, cred, **pool.client_kwargs())
    with pytest.raises(HttpResponseError) as err:
        list(rbac.list_role_assignments(KeyVaultRoleScope.GLOBAL))
    _assert_forbidden(err, "roleAssignments/read/action")


def test_token_from_unknown_issuer_is_rejected(pool, activation):
    """A syntactically valid but unsigned token must get 401, which the SDK reports as an error."""
    from azure.core.exceptions import ClientAuthenticationError

    from keystead_pool import StaticTokenCredential
    import base64
    import json
    import time

    def seg(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    forged = ".".join(
        [
            seg({"alg": "none", "typ": "JWT"}),
            seg({"sub": ADMIN_SUBJECT, "aud": pool.info["audience"], "iss": pool.info["issuer"],
                 "exp": int(time.time()) + 600}),
            "",
        ]
    )
    keys = KeyClient(pool.endpoint, StaticTokenCredential(forged, "forged"), **pool.client_kwargs())
    with pytest.raises((ClientAuthenticationError, HttpResponseError)) as err:
        keys.get_random_bytes(4)
    assert err.value.status_code == 401
