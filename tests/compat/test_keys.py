"""Key management through `azure-keyvault-keys` KeyClient against a local Keystead pool."""

from __future__ import annotations

import datetime
import hashlib
import os
from collections import Counter

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.keyvault.keys import (
    JsonWebKey,
    KeyCurveName,
    KeyRotationLifetimeAction,
    KeyRotationPolicy,
    KeyRotationPolicyAction,
    KeyType,
)
from azure.keyvault.keys.crypto import EncryptionAlgorithm, SignatureAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def _int_bytes(n: int, length: int | None = None) -> bytes:
    return n.to_bytes(length or (n.bit_length() + 7) // 8, "big")


def _assert_public_only(key) -> None:
    jwk = key.key
    for private in ("d", "p", "q", "dp", "dq", "qi", "k"):
        assert getattr(jwk, private, None) in (None, b""), f"get/create returned private field {private!r}"


def _assert_kid(key, name: str, endpoint: str) -> None:
    assert key.name == name
    assert key.id == f"{endpoint}/keys/{name}/{key.properties.version}"
    assert key.properties.version and len(key.properties.version) >= 16


# --- create ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [2048, 3072, 4096])
def test_create_rsa_key(key_client, pool, unique_name, size):
    name = unique_name(f"rsa{size}")
    key = key_client.create_rsa_key(name, size=size, hardware_protected=True)
    _assert_kid(key, name, pool.endpoint)
    assert key.key_type == KeyType.rsa_hsm
    assert len(key.key.n) * 8 == size
    assert int.from_bytes(key.key.e, "big") == 65537
    _assert_public_only(key)
    assert key.properties.enabled is True
    assert key.properties.created_on is not None
    assert key.properties.recovery_level
    assert key.properties.managed in (None, False)


@pytest.mark.parametrize(
    "curve,coord_len",
    [(KeyCurveName.p_256, 32), (KeyCurveName.p_384, 48), (KeyCurveName.p_521, 66), (KeyCurveName.p_256_k, 32)],
)
def test_create_ec_key(key_client, pool, unique_name, curve, coord_len):
    name = unique_name("ec")
    key = key_client.create_ec_key(name, curve=curve, hardware_protected=True)
    _assert_kid(key, name, pool.endpoint)
    assert key.key_type == KeyType.ec_hsm
    assert key.key.crv == curve
    assert len(key.key.x) == coord_len and len(key.key.y) == coord_len
    _assert_public_only(key)


@pytest.mark.parametrize("size", [128, 192, 256])
def test_create_oct_key(key_client, pool, unique_name, size):
    name = unique_name(f"oct{size}")
    key = key_client.create_oct_key(name, size=size, hardware_protected=True)
    _assert_kid(key, name, pool.endpoint)
    assert key.key_type == KeyType.oct_hsm
    _assert_public_only(key)  # no key material is released for symmetric keys


def test_create_with_options(key_client, unique_name):
    name = unique_name("opts")
    expires = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(days=30)
    key = key_client.create_rsa_key(
        name,
        size=3072,
        hardware_protected=True,
        key_operations=["sign", "verify"],
        tags={"team": "compat", "env": "test"},
        expires_on=expires,
    )
    assert key.properties.tags == {"team": "compat", "env": "test"}
    assert key.properties.expires_on == expires
    assert sorted(key.key_operations) == ["sign", "verify"]


def test_create_rejects_bad_name(key_client):
    with pytest.raises(HttpResponseError) as err:
        key_client.create_ec_key("bad_name!", curve=KeyCurveName.p_256, hardware_protected=True)
    assert err.value.status_code == 400


# --- import ------------------------------------------------------------------------------------


def test_import_rsa_key(key_client, crypto_client, unique_name):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    nums = private.private_numbers()
    pub = nums.public_numbers
    jwk = JsonWebKey(
        kty=KeyType.rsa_hsm,
        key_ops=["sign", "verify", "encrypt", "decrypt", "wrapKey", "unwrapKey"],
        n=_int_bytes(pub.n),
        e=_int_bytes(pub.e),
        d=_int_bytes(nums.d),
        p=_int_bytes(nums.p),
        q=_int_bytes(nums.q),
        dp=_int_bytes(nums.dmp1),
        dq=_int_bytes(nums.dmq1),
        qi=_int_bytes(nums.iqmp),
    )
    name = unique_name("imp-rsa")
    key = key_client.import_key(name, jwk, hardware_protected=True)
    assert key.name == name
    assert key.key_type == KeyType.rsa_hsm
    assert int.from_bytes(key.key.n, "big") == pub.n
    _assert_public_only(key)

    # the server holds the same private key: its signature verifies with our public key ...
    digest = hashlib.sha256(b"imported rsa").digest()
    signed = crypto_client(key).sign(SignatureAlgorithm.rs256, digest)
    private.public_key().verify(
        signed.signature, b"imported rsa", padding.PKCS1v15(), hashes.SHA256()
    )
    # ... and it decrypts what we encrypt with it
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    ct = private.public_key().encrypt(b"to the hsm", oaep)
    assert crypto_client(key).decrypt(EncryptionAlgorithm.rsa_oaep_256, ct).plaintext == b"to the hsm"


@pytest.mark.parametrize(
    "curve_name,curve,hash_alg,alg,size",
    [
        (KeyCurveName.p_256, ec.SECP256R1(), hashes.SHA256(), SignatureAlgorithm.es256, 32),
        (KeyCurveName.p_384, ec.SECP384R1(), hashes.SHA384(), SignatureAlgorithm.es384, 48),
    ],
)
def test_import_ec_key(key_client, crypto_client, unique_name, curve_name, curve, hash_alg, alg, size):
    private = ec.generate_private_key(curve)
    nums = private.private_numbers()
    jwk = JsonWebKey(
        kty=KeyType.ec_hsm,
        crv=curve_name,
        key_ops=["sign", "verify"],
        x=_int_bytes(nums.public_numbers.x, size),
        y=_int_bytes(nums.public_numbers.y, size),
        d=_int_bytes(nums.private_value, size),
    )
    name = unique_name("imp-ec")
    key = key_client.import_key(name, jwk, hardware_protected=True)
    assert key.key.crv == curve_name
    assert int.from_bytes(key.key.x, "big") == nums.public_numbers.x
    _assert_public_only(key)
    h = hashes.Hash(hash_alg)
    h.update(b"imported ec")
    digest = h.finalize()
    sig = crypto_client(key).sign(alg, digest).signature
    assert len(sig) == 2 * size
    der = encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
    private.public_key().verify(der, b"imported ec", ec.ECDSA(hash_alg))


def test_import_oct_key(key_client, crypto_client, unique_name):
    k = os.urandom(32)
    name = unique_name("imp-oct")
    key = key_client.import_key(
        name, JsonWebKey(kty=KeyType.oct_hsm, k=k, key_ops=["encrypt", "decrypt", "wrapKey", "unwrapKey"]),
        hardware_protected=True,
    )
    assert key.key_type == KeyType.oct_hsm
    _assert_public_only(key)
    # server-side AES-GCM with the imported key, opened locally with the same key
    result = crypto_client(key).encrypt(
        EncryptionAlgorithm.a256_gcm, b"imported oct", additional_authenticated_data=b"hdr"
    )
    assert len(result.iv) == 12 and len(result.tag) == 16
    assert AESGCM(k).decrypt(result.iv, result.ciphertext + result.tag, b"hdr") == b"imported oct"


def test_import_existing_name_adds_version(key_client, unique_name):
    name = unique_name("imp-twice")
    first = key_client.import_key(name, JsonWebKey(kty=KeyType.oct_hsm, k=os.urandom(16)), hardware_protected=True)
    second = key_client.import_key(name, JsonWebKey(kty=KeyType.oct_hsm, k=os.urandom(16)), hardware_protected=True)
    assert first.properties.version != second.properties.version
    assert key_client.get_key(name).properties.version == second.properties.version


# --- get / list --------------------------------------------------------------------------------


def test_get_latest_and_by_version(key_client, unique_name):
    name = unique_name("get")
    v1 = key_client.create_ec_key(name, curve=KeyCurveName.p_256, hardware_protected=True)
    v2 = key_client.create_ec_key(name, curve=KeyCurveName.p_256, hardware_protected=True)
    assert v1.properties.version != v2.properties.version
    latest = key_client.get_key(name)
    assert latest.id == v2.id and latest.key.x == v2.key.x
    old = key_client.get_key(name, v1.properties.version)
    assert old.id == v1.id and old.key.x == v1.key.x
    _assert_public_only(old)


def test_get_unknown_key_is_not_found(key_client, unique_name):
    with pytest.raises(ResourceNotFoundError) as err:
        key_client.get_key(unique_name("missing"))
    assert err.value.status_code == 404
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(unique_name("missing"), "0" * 32)


def test_list_keys_pages_through_next_link(key_client, unique_name):
    prefix = unique_name("list")
    names = {f"{prefix}-{i}" for i in range(27)}
    for n in names:
        key_client.create_oct_key(n, size=128, hardware_protected=True)

    # default page size (the service maximum, 25): more than one page
    seen = Counter(p.name for p in key_client.list_properties_of_keys() if p.name.startswith(prefix + "-"))
    assert set(seen) == names
    assert all(c == 1 for c in seen.values()), f"keys listed more than once: {[n for n, c in seen.items() if c > 1]}"

    # small pages: each page respects maxresults, every key exactly once
    pages = list(key_client.list_properties_of_keys(max_page_size=5).by_page())
    assert len(pages) >= 6
    all_names = []
    for page in pages:
        items = list(page)
        assert len(items) <= 5
        all_names.extend(p.name for p in items)
    counts = Counter(all_names)
    assert all(c == 1 for c in counts.values())
    assert names <= set(counts)
    for props in key_client.list_properties_of_keys(max_page_size=25):
        if props.name in names:
            assert props.version is None  # list items carry kid without a version
            assert props.enabled is True


def test_list_key_versions(key_client, unique_name):
    name = unique_name("versions")
    versions = {key_client.create_ec_key(name, curve=KeyCurveName.p_256, hardware_protected=True).properties.version
                for _ in range(3)}
    listed = [p.version for p in key_client.list_properties_of_key_versions(name)]
    assert Counter(listed) == Counter(versions)
    paged = [p.version for p in key_client.list_properties_of_key_versions(name, max_page_size=1)]
    assert sorted(paged) == sorted(versions)


# --- update ------------------------------------------------------------------------------------


def test_update_key_properties(key_client, crypto_client, unique_name):
    name = unique_name("update")
    key = key_client.create_ec_key(name, curve=KeyCurveName.p_256, hardware_protected=True)
    expires = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) + datetime.timedelta(days=10)
    updated = key_client.update_key_properties(name, enabled=False, tags={"stage": "off"}, expires_on=expires)
    assert updated.properties.version == key.properties.version
    assert updated.properties.enabled is False
    assert updated.properties.tags == {"stage": "off"}
    assert updated.properties.expires_on == expires
    assert updated.properties.updated_on >= key.properties.updated_on
    fetched = key_client.get_key(name)
    assert fetched.properties.enabled is False and fetched.properties.tags == {"stage": "off"}

    # a disabled key cannot be used
    digest = hashlib.sha256(b"x").digest()
    with pytest.raises(HttpResponseError) as err:
        crypto_client(key).sign(SignatureAlgorithm.es256, digest)
    assert err.value.status_code in (400, 403)

    # enable again, by explicit version
    again = key_client.update_key_properties(name, key.properties.version, enabled=True)
    assert again.properties.enabled is True
    assert again.properties.tags == {"stage": "off"}  # untouched fields keep their values
    assert crypto_client(key).sign(SignatureAlgorithm.es256, digest).signature


def test_update_unknown_key_is_not_found(key_client, unique_name):
    with pytest.raises(ResourceNotFoundError):
        key_client.update_key_properties(unique_name("missing"), enabled=False)


# --- delete / recover / purge ------------------------------------------------------------------


def test_delete_recover_purge(key_client, pool, unique_name):
    name = unique_name("del")
    key = key_client.create_rsa_key(name, size=2048, hardware_protected=True)
    deleted = key_client.begin_delete_key(name).result()
    assert deleted.name == name
    assert deleted.recovery_id == f"{pool.endpoint}/deletedkeys/{name}"
    assert deleted.deleted_date is not None and deleted.scheduled_purge_date is not None
    assert deleted.scheduled_purge_date > deleted.deleted_date
    assert deleted.key.n == key.key.n

    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(name)
    got = key_client.get_deleted_key(name)
    assert got.id == key.id and got.recovery_id == deleted.recovery_id
    listed = [d for d in key_client.list_deleted_keys() if d.name == name]
    assert len(listed) == 1 and listed[0].recovery_id == deleted.recovery_id

    recovered = key_client.begin_recover_deleted_key(name).result()
    assert recovered.id == key.id
    assert key_client.get_key(name).key.n == key.key.n
    with pytest.raises(ResourceNotFoundError):
        key_client.get_deleted_key(name)

    key_client.begin_delete_key(name).wait()
    key_client.purge_deleted_key(name)
    with pytest.raises(ResourceNotFoundError):
        key_client.get_deleted_key(name)
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(name)
    assert name not in {d.name for d in key_client.list_deleted_keys()}


def test_delete_unknown_key_is_not_found(key_client, unique_name):
    with pytest.raises(ResourceNotFoundError):
        key_client.begin_delete_key(unique_name("missing"))
    with pytest.raises(ResourceNotFoundError):
        key_client.get_deleted_key(unique_name("missing"))
    with pytest.raises(ResourceNotFoundError):
        key_client.purge_deleted_key(unique_name("missing"))


def test_list_deleted_keys_pages(key_client, unique_name):
    prefix = unique_name("dlist")
    names = {f"{prefix}-{i}" for i in range(3)}
    for n in names:
        key_client.create_oct_key(n, size=128, hardware_protected=True)
        key_client.begin_delete_key(n).wait()
    seen = [d.name for d in key_client.list_deleted_keys(max_page_size=1) if d.name.startswith(prefix + "-")]
    assert Counter(seen) == Counter(names)


# --- backup / restore --------------------------------------------------------------------------


def test_backup_restore(key_client, crypto_client, unique_name):
    name = unique_name("backup")
    key = key_client.create_rsa_key(name, size=2048, hardware_protected=True)
    digest = hashlib.sha256(b"before backup").digest()
    sig = crypto_client(key).sign(SignatureAlgorithm.rs256, digest).signature

    backup = key_client.backup_key(name)
    assert isinstance(backup, bytes) and len(backup) > 64

    key_client.begin_delete_key(name).wait()
    key_client.purge_deleted_key(name)
    with pytest.raises(ResourceNotFoundError):
        key_client.get_key(name)

    restored = key_client.restore_key_backup(backup)
    assert restored.name == name
    assert restored.id == key.id
    assert restored.key.n == key.key.n
    # the key works again and is the same key
    assert crypto_client(restored, remote_only=True).verify(SignatureAlgorithm.rs256, digest, sig).is_valid
    again = crypto_client(restored).sign(SignatureAlgorithm.rs256, digest).signature
    assert again == sig  # RSASSA-PKCS1-v1_5 is deterministic


def test_restore_over_existing_key_conflicts(key_client, unique_name):
    name = unique_name("backup-dup")
    key_client.create_oct_key(name, size=256, hardware_protected=True)
    backup = key_client.backup_key(name)
    with pytest.raises(HttpResponseError) as err:
        key_client.restore_key_backup(backup)
    assert err.value.status_code in (400, 409)


def test_restore_garbage_is_rejected(key_client):
    with pytest.raises(HttpResponseError) as err:
        key_client.restore_key_backup(b"this is not a keystead backup")
    assert err.value.status_code == 400


# --- rotation ----------------------------------------------------------------------------------


def test_rotate_key(key_client, unique_name):
    name = unique_name("rotate")
    key = key_client.create_rsa_key(name, size=2048, hardware_protected=True, tags={"keep": "me"})
    rotated = key_client.rotate_key(name)
    assert rotated.name == name
    assert rotated.properties.version != key.properties.version
    assert rotated.key.n != key.key.n
    assert rotated.key_type == key.key_type
    assert key_client.get_key(name).properties.version == rotated.properties.version
    versions = {p.version for p in key_client.list_properties_of_key_versions(name)}
    assert versions == {key.properties.version, rotated.properties.version}


def test_rotation_policy(key_client, pool, unique_name):
    name = unique_name("policy")
    key_client.create_ec_key(name, curve=KeyCurveName.p_256, hardware_protected=True)
    initial = key_client.get_key_rotation_policy(name)
    assert initial is not None

    policy = KeyRotationPolicy(
        expires_in="P2Y",
        lifetime_actions=[
            KeyRotationLifetimeAction(KeyRotationPolicyAction.rotate, time_after_create="P90D"),
            KeyRotationLifetimeAction(KeyRotationPolicyAction.notify, time_before_expiry="P30D"),
        ],
    )
    updated = key_client.update_key_rotation_policy(name, policy)
    assert updated.id == f"{pool.endpoint}/keys/{name}/rotationpolicy"
    assert updated.expires_in == "P2Y"
    actions = {(a.action, a.time_after_create, a.time_before_expiry) for a in updated.lifetime_actions}
    assert actions == {
        (KeyRotationPolicyAction.rotate, "P90D", None),
        (KeyRotationPolicyAction.notify, None, "P30D"),
    }
    fetched = key_client.get_key_rotation_policy(name)
    assert fetched.expires_in == "P2Y"
    assert {(a.action, a.time_after_create, a.time_before_expiry) for a in fetched.lifetime_actions} == actions
    assert fetched.updated_on is not None


def test_rotate_unknown_key_is_not_found(key_client, unique_name):
    with pytest.raises(ResourceNotFoundError):
        key_client.rotate_key(unique_name("missing"))


# --- random bytes ------------------------------------------------------------------------------


def test_get_random_bytes(key_client):
    a = key_client.get_random_bytes(32)
    b = key_client.get_random_bytes(32)
    assert isinstance(a, bytes) and len(a) == 32 and len(b) == 32
    assert a != b
    assert len(key_client.get_random_bytes(1)) == 1
    assert len(key_client.get_random_bytes(128)) == 128


def test_get_random_bytes_rejects_bad_count(key_client):
    with pytest.raises(HttpResponseError) as err:
        key_client.get_random_bytes(129)
    assert err.value.status_code == 400
