"""Key operations with the official Azure SDK (azure-keyvault-keys) against a pool on the
dev cluster, through the pool's Service address: the endpoint's host name resolves to the
Service's cluster IP (what cluster DNS would do; this process patches its own resolver).

Prints one JSON object: the key's id, whether the signature verified, the key names listed,
and the scopes the SDK asked its credential for. Exits non-zero on any failure.
"""

import argparse
import hashlib
import json
import pathlib
import socket
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tests" / "compat"))
from keystead_pool import StaticTokenCredential  # noqa: E402

from azure.keyvault.keys import KeyClient  # noqa: E402
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--vault-url", required=True)
    p.add_argument("--ca", required=True, help="the pool's CA bundle (PEM file)")
    p.add_argument("--token-file", required=True)
    p.add_argument("--address", required=True, help="HOST=IP: the Service address of HOST")
    p.add_argument("--key", default="sdk-key")
    a = p.parse_args()
    host, ip = a.address.split("=", 1)
    real = socket.getaddrinfo

    def resolve(h, *rest, **kw):
        return real(ip if h == host else h, *rest, **kw)

    socket.getaddrinfo = resolve
    cred = StaticTokenCredential(pathlib.Path(a.token_file).read_text(), "app")
    client = KeyClient(a.vault_url, cred, connection_verify=a.ca)
    key = client.create_ec_key(a.key, curve="P-256")
    crypto = CryptographyClient(key, cred, connection_verify=a.ca)
    digest = hashlib.sha256(b"keystead on a real control plane").digest()
    signed = crypto.sign(SignatureAlgorithm.es256, digest)
    verified = crypto.verify(SignatureAlgorithm.es256, digest, signed.signature).is_valid
    names = sorted(k.name for k in client.list_properties_of_keys())
    print(json.dumps({"kid": key.id, "verified": verified, "keys": names,
                      "scopes": [list(s) for s in cred.requested_scopes]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
