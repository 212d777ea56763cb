"""
TLS: the certificates C{netshare init} makes, how a listener serves TLS,
and the client-side options that verify a server.

Any listener can be TLS by giving an C{ssl:} endpoint, e.g.
C{--files ssl:7443:interface=127.0.0.1:privateKey=var/tls/key.pem:certKey=var/tls/cert.pem}.
netshare serves it with its own options (L{server_endpoint}): TLS 1.2 with
forward-secret AEAD suites only (ECDHE/DHE with AES-GCM or ChaCha20-Poly1305;
no CBC, no SHA-1 MACs, no static RSA) and TLS 1.3.  A connection that has
not finished its handshake within C{--tls-handshake-timeout} is cut (the
protocols do that, see C{CommandProtocol.handshakeCompleted}).

Clients verify the certificate chain *and* the host name (through
service_identity) before a single command is sent; C{netshare init}'s
server certificate is signed by a local CA (C{tls/ca.pem}, the C{--cafile}
to give clients), and is not a CA itself.
"""

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def make_certificates(directory, hostnames=("localhost",), ips=("127.0.0.1", "::1"), days=825):
    """
    A small local CA and a server certificate it signs, in C{directory}:
    C{ca.pem} (what clients trust: C{--cafile}), C{ca-key.pem}, C{cert.pem}
    and C{key.pem} (what the server serves).  The server certificate is not
    a CA (C{CA:FALSE}, for server authentication only), so its key can sign
    nothing but the server's own handshakes; the CA's key is used once, here,
    and can be moved offline afterwards.  Keys are mode 0600.

    @return: C{(ca, cert, key)} paths.
    """
    ca_path = os.path.join(directory, "ca.pem")
    ca_key_path = os.path.join(directory, "ca-key.pem")
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    now = datetime.datetime.now(datetime.timezone.utc)
    start = now - datetime.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "netshare local CA"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "netshare"),
        ]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "netshare"),
        ]
    )
    san = [x509.DNSName(h) for h in hostnames] + [
        x509.IPAddress(ipaddress.ip_address(i)) for i in ips
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    for path, private in ((ca_key_path, ca_key), (key_path, key)):
        _write(
            path,
            private.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            0o600,
        )
    _write(ca_path, ca.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return ca_path, cert_path, key_path


def make_ssh_host_key(path):
    """An Ed25519 host key for the SSH manhole, OpenSSH format, mode 0600."""
    key = ed25519.Ed25519PrivateKey.generate()
    _write(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        0o600,
    )


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


#: TLS 1.2 suites netshare accepts: forward secrecy and AEAD only.  (TLS 1.3
#: suites are configured apart by OpenSSL and are all AEAD.)
AEAD_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!MD5:!DSS"


def server_options(private_key, cert_key=None, extra_cert_chain=None, dh_parameters=None):
    """
    C{CertificateOptions} for a listener: the key and certificate (PEM
    files, as Twisted's C{ssl:} endpoint takes them), TLS 1.2 at least, and
    only L{AEAD_CIPHERS}.
    """
    import re

    from twisted.internet import ssl

    with open(cert_key or private_key, "rb") as f:
        cert_pem = f.read()
    with open(private_key, "rb") as f:
        key_pem = f.read()
    private = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    chain = None
    if extra_cert_chain:
        with open(extra_cert_chain, "rb") as f:
            found = re.findall(
                rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----",
                f.read(),
                flags=re.DOTALL,
            )
        if not found:
            raise ValueError("%s holds no PEM certificate" % (extra_cert_chain,))
        chain = [ssl.Certificate.loadPEM(pem).original for pem in found]
    dh = None
    if dh_parameters:
        from twisted.python.filepath import FilePath

        dh = ssl.DiffieHellmanParameters.fromFile(FilePath(dh_parameters))
    return ssl.CertificateOptions(
        privateKey=private.privateKey.original,
        certificate=private.original,
        extraCertChain=chain,
        dhParameters=dh,
        acceptableCiphers=ssl.AcceptableCiphers.fromOpenSSLCipherString(AEAD_CIPHERS),
        raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
    )


_SSL_KEYS = {
    "port",
    "privateKey",
    "certKey",
    "interface",
    "backlog",
    "extraCertChain",
    "dhParameters",
}


def parse_description(description: str) -> tuple[str, list, dict]:
    """Split a Twisted endpoint description: C{(kind, positional, keywords)},
    with C{\\:} and C{\\\\} unescaped as Twisted does."""
    parts, current, i = [], [], 0
    while i < len(description):
        ch = description[i]
        if ch == "\\" and i + 1 < len(description):
            current.append(description[i + 1])
            i += 2
            continue
        if ch == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    kind, args, kw = parts[0].lower(), [], {}
    for part in parts[1:]:
        key, sep, value = part.partition("=")
        if sep:
            kw[key] = value
        else:
            args.append(part)
    return kind, args, kw


def server_endpoint(reactor, description: str, backlog: int | None = None):
    """
    The endpoint of an C{ssl:} description, served with L{server_options}
    (Twisted's own C{ssl:} endpoint would accept its default ciphers, CBC
    suites included).  C{backlog} applies unless the description sets one.
    """
    from twisted.internet.endpoints import SSL4ServerEndpoint

    kind, args, kw = parse_description(description)
    if kind != "ssl":
        raise ValueError("not an ssl: endpoint: %s" % (description,))
    if args:
        kw.setdefault("port", args[0])
    unknown = set(kw) - _SSL_KEYS
    if unknown or "port" not in kw:
        raise ValueError(
            "ssl: endpoint needs a port and takes %s (got %s)"
            % (", ".join(sorted(_SSL_KEYS)), ", ".join(sorted(unknown)) or "none")
        )
    options = server_options(
        kw.get("privateKey", "server.pem"),
        kw.get("certKey"),
        kw.get("extraCertChain"),
        kw.get("dhParameters"),
    )
    return SSL4ServerEndpoint(
        reactor,
        int(kw["port"]),
        options,
        backlog=int(kw.get("backlog") or backlog or 50),
        interface=kw.get("interface", ""),
    )
