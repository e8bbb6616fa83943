"""Custodian side of the security domain for the tests: RSA custodian keys with self-signed
certificates, the JWK form `az keyvault security-domain download` sends (reference §3.1), and
decryption of one share of a Keystead security-domain file (docs/security-domain.md).

Only `cryptography` is used.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os
import struct
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from azure.keyvault.securitydomain.models import SecurityDomainJsonWebKey


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_dec(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


@dataclass
class Custodian:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def x5t_256(self) -> str:
        return b64u(hashlib.sha256(self.der).digest())

    def jwk(self) -> SecurityDomainJsonWebKey:
        """The JWK `az keyvault security-domain download` sends for one certificate (reference §3.1)."""
        pub = self.cert.public_key().public_numbers()
        return SecurityDomainJsonWebKey(
            kid=self.cert.subject.rfc4514_string(),
            kty="RSA",
            key_ops=["verify", "encrypt", "wrapKey"],
            n=b64u(int_bytes(pub.n)),
            e=b64u(int_bytes(pub.e)),
            x5_c=[base64.b64encode(self.der).decode("ascii")],
            x5_t=b64u(hashlib.sha1(self.der).digest()),
            x5_t_s256=self.x5t_256,
            alg="RSA-OAEP-256",
        )


def make_custodian(common_name: str) -> Custodian:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return Custodian(key, cert)


# --- Keystead security-domain file (`keystead/sd/1`, docs/security-domain.md) -------------------


def frame(data: bytes | str) -> bytes:
    """`F(x)`: x prefixed by its length as a 4-byte big-endian integer."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return struct.pack(">I", len(data)) + data


def share_label(domain_id: str, x5t_256: str, public_key_sha256: str) -> bytes:
    return frame("keystead/sd/1 share") + frame(domain_id) + frame(x5t_256) + frame(public_key_sha256)


def decrypt_share(custodian: Custodian, sd: dict, share: dict) -> bytes:
    """RSA-OAEP-256 with the label that binds the share to its file and custodian entry."""
    label = share_label(sd["domain_id"], share["x5t_256"], share["public_key_sha256"])
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=label)
    return custodian.key.decrypt(b64u_dec(share["enc_share"]), oaep)


def spki_sha256(custodian: Custodian) -> str:
    spki = custodian.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return b64u(hashlib.sha256(spki).digest())


def write_custodian_files(custodian: Custodian, directory, name: str) -> tuple[str, str]:
    """`NAME.cer` (PEM certificate) and `NAME.key` (unencrypted PKCS#8 PEM, mode 0600)."""
    cer = os.path.join(directory, f"{name}.cer")
    key = os.path.join(directory, f"{name}.key")
    with open(cer, "wb") as f:
        f.write(custodian.cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            custodian.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cer, key
