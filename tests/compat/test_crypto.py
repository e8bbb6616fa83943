"""Cryptographic operations through `azure-keyvault-keys` CryptographyClient, each result checked
independently with `cryptography` where the key material allows it.

`crypto_client(key)` is the SDK's default client: it GETs the key and does public-key operations
(encrypt, wrap, verify) locally. `crypto_client(key, remote_only=True)` sends every operation to
the server. Symmetric keys always use `remote_only=True`: for an oct key the SDK's local provider
would invent a random key when the service (correctly) releases no `k`.
"""

from __future__ import annotations

import hashlib
import os

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import JsonWebKey, KeyCurveName, KeyType
from azure.keyvault.keys.crypto import EncryptionAlgorithm, KeyWrapAlgorithm, SignatureAlgorithm
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap, aes_key_wrap_with_padding

HASHES = {256: hashes.SHA256, 384: hashes.SHA384, 512: hashes.SHA512}
CURVES = {
    KeyCurveName.p_256: (ec.SECP256R1, 32),
    KeyCurveName.p_384: (ec.SECP384R1, 48),
    KeyCurveName.p_521: (ec.SECP521R1, 66),
    KeyCurveName.p_256_k: (ec.SECP256K1, 32),
}


def _digest(bits: int, data: bytes) -> bytes:
    return {256: hashlib.sha256, 384: hashlib.sha384, 512: hashlib.sha512}[bits](data).digest()


def _rsa_public(key) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(int.from_bytes(key.key.e, "big"), int.from_bytes(key.key.n, "big")).public_key()


def _ec_public(key) -> ec.EllipticCurvePublicKey:
    curve, _ = CURVES[key.key.crv]
    return ec.EllipticCurvePublicNumbers(
        int.from_bytes(key.key.x, "big"), int.from_bytes(key.key.y, "big"), curve()
    ).public_key()


def _import_oct(key_client, name: str, k: bytes):
    return key_client.import_key(
        name,
        JsonWebKey(kty=KeyType.oct_hsm, k=k, key_ops=["encrypt", "decrypt", "wrapKey", "unwrapKey", "sign", "verify"]),
        hardware_protected=True,
    )


# --- sign / verify -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alg,bits,pss",
    [
        (SignatureAlgorithm.rs256, 256, False),
        (SignatureAlgorithm.rs384, 384, False),
        (SignatureAlgorithm.rs512, 512, False),
        (SignatureAlgorithm.ps256, 256, True),
        (SignatureAlgorithm.ps384, 384, True),
        (SignatureAlgorithm.ps512, 512, True),
    ],
)
def test_rsa_sign_verify(key_client, crypto_client, unique_name, alg, bits, pss):
    key = key_client.create_rsa_key(unique_name("sign-rsa"), size=2048, hardware_protected=True)
    digest = _digest(bits, b"message for " + alg.value.encode())
    result = crypto_client(key).sign(alg, digest)
    assert result.algorithm == alg
    assert result.key_id == key.id
    assert len(result.signature) == 256

    # independently, with the public key from get_key
    public = _rsa_public(key_client.get_key(key.name))
    pad = (
        padding.PSS(mgf=padding.MGF1(HASHES[bits]()), salt_length=bits // 8)
        if pss
        else padding.PKCS1v15()
    )
    public.verify(result.signature, digest, pad, Prehashed(HASHES[bits]()))

    # the SDK's local verify and the server's verify agree
    assert crypto_client(key).verify(alg, digest, result.signature).is_valid
    remote = crypto_client(key, remote_only=True)
    assert remote.verify(alg, digest, result.signature).is_valid
    assert not remote.verify(alg, _digest(bits, b"another message"), result.signature).is_valid


@pytest.mark.parametrize(
    "alg,curve,bits",
    [
        (SignatureAlgorithm.es256, KeyCurveName.p_256, 256),
        (SignatureAlgorithm.es384, KeyCurveName.p_384, 384),
        (SignatureAlgorithm.es512, KeyCurveName.p_521, 512),
        (SignatureAlgorithm.es256_k, KeyCurveName.p_256_k, 256),
    ],
)
def test_ec_sign_verify(key_client, crypto_client, unique_name, alg, curve, bits):
    key = key_client.create_ec_key(unique_name("sign-ec"), curve=curve, hardware_protected=True)
    digest = _digest(bits, b"message for " + alg.value.encode())
    result = crypto_client(key).sign(alg, digest)
    _, coord = CURVES[curve]
    assert len(result.signature) == 2 * coord, "JWS ECDSA signatures are r || s, each the curve's size"

    r = int.from_bytes(result.signature[:coord], "big")
    s = int.from_bytes(result.signature[coord:], "big")
    public = _ec_public(key_client.get_key(key.name))
    public.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(HASHES[bits]())))

    assert crypto_client(key).verify(alg, digest, result.signature).is_valid
    remote = crypto_client(key, remote_only=True)
    assert remote.verify(alg, digest, result.signature).is_valid
    bad = bytes([result.signature[0] ^ 1]) + result.signature[1:]
    assert not remote.verify(alg, digest, bad).is_valid
    with pytest.raises(InvalidSignature):
        public.verify(
            encode_dss_signature(int.from_bytes(bad[:coord], "big"), s), digest, ec.ECDSA(Prehashed(HASHES[bits]()))
        )


def test_sign_with_versionless_key_id(key_client, crypto_client, pool, unique_name):
    """A key id without a version makes the SDK send `POST /keys/{name}//sign`."""
    key = key_client.create_ec_key(unique_name("sign-nover"), curve=KeyCurveName.p_256, hardware_protected=True)
    digest = _digest(256, b"latest version")
    client = crypto_client(f"{pool.endpoint}/keys/{key.name}", remote_only=True)
    sig = client.sign(SignatureAlgorithm.es256, digest).signature
    assert crypto_client(key, remote_only=True).verify(SignatureAlgorithm.es256, digest, sig).is_valid


def test_sign_rejects_wrong_digest_length(key_client, crypto_client, unique_name):
    key = key_client.create_rsa_key(unique_name("sign-len"), size=2048, hardware_protected=True)
    with pytest.raises(HttpResponseError) as err:
        crypto_client(key).sign(SignatureAlgorithm.rs256, b"\x01" * 20)
    assert err.value.status_code == 400


def test_sign_rejects_algorithm_of_other_key_type(key_client, crypto_client, unique_name):
    key = key_client.create_ec_key(unique_name("sign-mismatch"), curve=KeyCurveName.p_256, hardware_protected=True)
    with pytest.raises(HttpResponseError) as err:
        crypto_client(key).sign(SignatureAlgorithm.rs256, _digest(256, b"x"))
    assert err.value.status_code == 400


@pytest.mark.parametrize("alg,bits", [(SignatureAlgorithm.hs256, 256), (SignatureAlgorithm.hs512, 512)])
def test_hmac_sign_verify(key_client, crypto_client, unique_name, alg, bits):
    key = key_client.create_oct_key(
        unique_name("hmac"), size=256, hardware_protected=True, key_operations=["sign", "verify"]
    )
    client = crypto_client(key, remote_only=True)
    digest = _digest(bits, b"hmac me")
    sig = client.sign(alg, digest).signature
    assert len(sig) == bits // 8
    assert client.verify(alg, digest, sig).is_valid
    assert not client.verify(alg, _digest(bits, b"other"), sig).is_valid


# --- RSA encrypt / decrypt ---------------------------------------------------------------------

RSA_ENCRYPTION = [
    (EncryptionAlgorithm.rsa_oaep, padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)),
    (
        EncryptionAlgorithm.rsa_oaep_256,
        padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None),
    ),
    (EncryptionAlgorithm.rsa1_5, padding.PKCS1v15()),
]


@pytest.mark.parametrize("alg,pad", RSA_ENCRYPTION)
def test_rsa_encrypt_decrypt(key_client, crypto_client, unique_name, alg, pad):
    key = key_client.create_rsa_key(unique_name("enc-rsa"), size=2048, hardware_protected=True)
    plaintext = b"attack at dawn " + alg.value.encode()

    # SDK local encryption with the public key -> server decryption
    local = crypto_client(key).encrypt(alg, plaintext)
    assert len(local.ciphertext) == 256
    assert crypto_client(key).decrypt(alg, local.ciphertext).plaintext == plaintext

    # server encryption -> server decryption
    remote = crypto_client(key, remote_only=True)
    enc = remote.encrypt(alg, plaintext)
    assert enc.key_id == key.id and len(enc.ciphertext) == 256
    assert remote.decrypt(alg, enc.ciphertext).plaintext == plaintext

    # `cryptography` encryption with the public key from get_key -> server decryption
    ct = _rsa_public(key_client.get_key(key.name)).encrypt(plaintext, pad)
    assert remote.decrypt(alg, ct).plaintext == plaintext


def test_rsa_decrypt_garbage_fails(key_client, crypto_client, unique_name):
    key = key_client.create_rsa_key(unique_name("enc-bad"), size=2048, hardware_protected=True)
    with pytest.raises(HttpResponseError) as err:
        crypto_client(key, remote_only=True).decrypt(EncryptionAlgorithm.rsa_oaep_256, os.urandom(256))
    assert err.value.status_code == 400


# --- AES encrypt / decrypt ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "size,alg",
    [(128, EncryptionAlgorithm.a128_gcm), (192, EncryptionAlgorithm.a192_gcm), (256, EncryptionAlgorithm.a256_gcm)],
)
def test_aes_gcm(key_client, crypto_client, unique_name, size, alg):
    k = os.urandom(size // 8)
    key = _import_oct(key_client, unique_name("gcm"), k)
    client = crypto_client(key, remote_only=True)
    plaintext, aad = b"gcm plaintext of odd length!!", b"associated"
    enc = client.encrypt(alg, plaintext, additional_authenticated_data=aad)  # no iv: the server makes one
    assert enc.iv is not None and len(enc.iv) == 12
    assert enc.tag is not None and len(enc.tag) == 16
    assert len(enc.ciphertext) == len(plaintext)
    # independently
    assert AESGCM(k).decrypt(enc.iv, enc.ciphertext + enc.tag, aad) == plaintext
    # through the server
    dec = client.decrypt(
        alg, enc.ciphertext, iv=enc.iv, authentication_tag=enc.tag, additional_authenticated_data=aad
    )
    assert dec.plaintext == plaintext
    # a second encryption uses a fresh iv
    assert client.encrypt(alg, plaintext, additional_authenticated_data=aad).iv != enc.iv
    # wrong aad fails authentication
    with pytest.raises(HttpResponseError) as err:
        client.decrypt(
            alg, enc.ciphertext, iv=enc.iv, authentication_tag=enc.tag,
            additional_authenticated_data=b"tampered",
        )
    assert err.value.status_code == 400
    # locally encrypted data decrypts on the server
    iv = os.urandom(12)
    sealed = AESGCM(k).encrypt(iv, b"from python", None)
    assert client.decrypt(alg, sealed[:-16], iv=iv, authentication_tag=sealed[-16:]).plaintext == b"from python"


def test_aes_gcm_with_server_generated_key(key_client, crypto_client, unique_name):
    key = key_client.create_oct_key(unique_name("gcm-gen"), size=256, hardware_protected=True)
    client = crypto_client(key, remote_only=True)
    enc = client.encrypt(EncryptionAlgorithm.a256_gcm, b"secret")
    assert len(enc.iv) == 12 and len(enc.tag) == 16
    dec = client.decrypt(EncryptionAlgorithm.a256_gcm, enc.ciphertext, iv=enc.iv, authentication_tag=enc.tag)
    assert dec.plaintext == b"secret"


@pytest.mark.parametrize(
    "size,alg,pad",
    [
        (128, EncryptionAlgorithm.a128_cbcpad, True),
        (192, EncryptionAlgorithm.a192_cbcpad, True),
        (256, EncryptionAlgorithm.a256_cbcpad, True),
        (128, EncryptionAlgorithm.a128_cbc, False),
        (256, EncryptionAlgorithm.a256_cbc, False),
    ],
)
def test_aes_cbc(key_client, crypto_client, unique_name, size, alg, pad):
    k = os.urandom(size // 8)
    key = _import_oct(key_client, unique_name("cbc"), k)
    client = crypto_client(key, remote_only=True)
    plaintext = b"seventeen bytes!!" if pad else b"exactly 32 bytes of plaintext..."
    iv = os.urandom(16)
    enc = client.encrypt(alg, plaintext, iv=iv)
    assert enc.iv in (None, iv)
    # independently
    dec = Cipher(algorithms.AES(k), modes.CBC(iv)).decryptor()
    raw = dec.update(enc.ciphertext) + dec.finalize()
    if pad:
        unpadder = sym_padding.PKCS7(128).unpadder()
        raw = unpadder.update(raw) + unpadder.finalize()
    assert raw == plaintext
    # through the server
    assert client.decrypt(alg, enc.ciphertext, iv=iv).plaintext == plaintext


def test_aes_cbc_rejects_unaligned_plaintext(key_client, crypto_client, unique_name):
    key = key_client.create_oct_key(unique_name("cbc-bad"), size=128, hardware_protected=True)
    with pytest.raises(HttpResponseError) as err:
        crypto_client(key, remote_only=True).encrypt(EncryptionAlgorithm.a128_cbc, b"17 bytes of data!", iv=os.urandom(16))
    assert err.value.status_code == 400


def test_aes_algorithm_must_match_key_size(key_client, crypto_client, unique_name):
    key = key_client.create_oct_key(unique_name("gcm-size"), size=128, hardware_protected=True)
    with pytest.raises(HttpResponseError) as err:
        crypto_client(key, remote_only=True).encrypt(EncryptionAlgorithm.a256_gcm, b"x")
    assert err.value.status_code == 400


# --- wrap / unwrap -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "alg", [KeyWrapAlgorithm.rsa_oaep_256, KeyWrapAlgorithm.rsa_oaep, KeyWrapAlgorithm.rsa1_5]
)
def test_rsa_wrap_unwrap(key_client, crypto_client, unique_name, alg):
    key = key_client.create_rsa_key(unique_name("wrap-rsa"), size=3072, hardware_protected=True)
    cek = os.urandom(32)
    local = crypto_client(key).wrap_key(alg, cek)  # SDK local wrap with the public key
    assert len(local.encrypted_key) == 384
    assert crypto_client(key).unwrap_key(alg, local.encrypted_key).key == cek
    remote = crypto_client(key, remote_only=True)
    wrapped = remote.wrap_key(alg, cek)
    assert wrapped.key_id == key.id
    assert remote.unwrap_key(alg, wrapped.encrypted_key).key == cek


@pytest.mark.parametrize(
    "size,alg",
    [
        (128, KeyWrapAlgorithm.aes_128),
        (192, KeyWrapAlgorithm.aes_192),
        (256, KeyWrapAlgorithm.aes_256),
        (256, KeyWrapAlgorithm.ckm_aes_key_wrap),
    ],
)
def test_aes_key_wrap(key_client, crypto_client, unique_name, size, alg):
    k = os.urandom(size // 8)
    key = _import_oct(key_client, unique_name("kw"), k)
    client = crypto_client(key, remote_only=True)
    cek = os.urandom(32)
    wrapped = client.wrap_key(alg, cek)
    assert wrapped.encrypted_key == aes_key_wrap(k, cek)  # RFC 3394 is deterministic
    assert client.unwrap_key(alg, wrapped.encrypted_key).key == cek
    assert client.unwrap_key(alg, aes_key_wrap(k, b"\x07" * 24)).key == b"\x07" * 24


def test_aes_key_wrap_pad(key_client, crypto_client, unique_name):
    k = os.urandom(32)
    key = _import_oct(key_client, unique_name("kwp"), k)
    client = crypto_client(key, remote_only=True)
    for secret in (b"\x01" * 20, os.urandom(33), os.urandom(32)):
        wrapped = client.wrap_key(KeyWrapAlgorithm.ckm_aes_key_wrap_pad, secret)
        assert wrapped.encrypted_key == aes_key_wrap_with_padding(k, secret)  # RFC 5649
        assert client.unwrap_key(KeyWrapAlgorithm.ckm_aes_key_wrap_pad, wrapped.encrypted_key).key == secret


def test_aes_unwrap_tampered_fails(key_client, crypto_client, unique_name):
    key = key_client.create_oct_key(unique_name("kw-bad"), size=256, hardware_protected=True)
    client = crypto_client(key, remote_only=True)
    wrapped = client.wrap_key(KeyWrapAlgorithm.aes_256, os.urandom(32)).encrypted_key
    tampered = bytes([wrapped[0] ^ 0x80]) + wrapped[1:]
    with pytest.raises(HttpResponseError) as err:
        client.unwrap_key(KeyWrapAlgorithm.aes_256, tampered)
    assert err.value.status_code == 400


# --- key_ops and unknown keys ------------------------------------------------------------------


def test_key_ops_restrict_operations(key_client, crypto_client, unique_name):
    key = key_client.create_rsa_key(
        unique_name("ops"), size=2048, hardware_protected=True, key_operations=["sign", "verify"]
    )
    with pytest.raises(HttpResponseError) as err:
        crypto_client(key, remote_only=True).decrypt(EncryptionAlgorithm.rsa_oaep_256, os.urandom(256))
    assert err.value.status_code in (400, 403)
    assert crypto_client(key).sign(SignatureAlgorithm.rs256, _digest(256, b"allowed")).signature


def test_crypto_on_unknown_key_is_not_found(crypto_client, pool, unique_name):
    from azure.core.exceptions import ResourceNotFoundError

    client = crypto_client(f"{pool.endpoint}/keys/{unique_name('missing')}/{'0' * 32}", remote_only=True)
    with pytest.raises(ResourceNotFoundError):
        client.sign(SignatureAlgorithm.es256, _digest(256, b"x"))
