"""
TLS material: the self-signed certificate C{netshare init} makes, and the
client-side options that verify a server against it.

Any listener can be TLS by giving an C{ssl:} endpoint, e.g.
C{--files ssl:7443:interface=127.0.0.1:privateKey=var/tls/key.pem:certKey=var/tls/cert.pem}.
Clients verify the certificate chain *and* the host name (through
service_identity) before a single command is sent.
"""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID


def make_self_signed(cert_path, key_path, hostnames=("localhost",), ips=("127.0.0.1", "::1"),
                     days=825):
    """Write a self-signed ECDSA P-256 certificate usable as its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0]),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "netshare")])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = [x509.DNSName(h) for h in hostnames] + [x509.IPAddress(ipaddress.ip_address(i))
                                                   for i in ips]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    _write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def make_ssh_host_key(path):
    """An Ed25519 host key for the SSH manhole, OpenSSH format, mode 0600."""
    key = ed25519.Ed25519PrivateKey.generate()
    _write(path, key.private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.OpenSSH,
                                   serialization.NoEncryption()), 0o600)


def _write(path, data, mode):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def client_options(hostname, cafile=None):
    """Options for a client connection verifying C{hostname} against C{cafile}
    (or the platform trust store when None)."""
    from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust
    if cafile:
        with open(cafile, "rb") as f:
            trust = Certificate.loadPEM(f.read())
    else:
        trust = platformTrust()
    return optionsForClientTLS(hostname, trustRoot=trust)
