"""Key files: every PEM form is read, and keys are written exactly as the reference does."""

from __future__ import annotations

import base64
import datetime
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from reverse_http.auth.keys import (
    KeyFileError,
    PrivateKey,
    PublicKey,
    algorithm_for_key,
    generate_private_key,
    load_private_key,
    load_private_key_pem,
    load_public_key,
    load_public_key_pem,
    private_key_to_pem,
    public_key_of,
    public_key_to_pem,
)

GO = Path(__file__).parent / "data" / "go-reference-jwt"
GO_PRIVATE = GO / "auth-key-private.pem"
GO_PUBLIC = GO / "auth-key-public.pem"

Enc = serialization.Encoding
PrivFmt = serialization.PrivateFormat
PubFmt = serialization.PublicFormat


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    key = generate_private_key("RS256", rsa_bits=2048)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    key = generate_private_key("ES256")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _pem(label: str, der: bytes) -> bytes:
    b64 = base64.b64encode(der).decode()
    body = "\n".join(b64[i : i + 64] for i in range(0, len(b64), 64))
    return f"-----BEGIN {label}-----\n{body}\n-----END {label}-----\n".encode()


def _labels(pem: bytes) -> list[str]:
    return re.findall(r"-----BEGIN ([A-Z ]+)-----", pem.decode())


def _same_public(a: PublicKey, b: PublicKey) -> bool:
    spki = PubFmt.SubjectPublicKeyInfo
    return a.public_bytes(Enc.DER, spki) == b.public_bytes(Enc.DER, spki)


# --- the Go reference's files ------------------------------------------------------


def test_go_key_pair_loads_and_matches() -> None:
    private = load_private_key(GO_PRIVATE)
    public = load_public_key(GO_PUBLIC)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert _same_public(public_key_of(private), public)
    assert algorithm_for_key(private) == "ES256"
    assert algorithm_for_key(public) == "ES256"


def test_go_files_use_reference_labels() -> None:
    assert _labels(GO_PRIVATE.read_bytes()) == ["EC PRIVATE KEY"]
    assert _labels(GO_PUBLIC.read_bytes()) == ["EC PUBLIC KEY"]


def test_serialization_is_byte_identical_to_go() -> None:
    private = load_private_key(GO_PRIVATE)
    assert private_key_to_pem(private) == GO_PRIVATE.read_bytes()
    assert public_key_to_pem(public_key_of(private)) == GO_PUBLIC.read_bytes()
    assert public_key_to_pem(load_public_key(GO_PUBLIC)) == GO_PUBLIC.read_bytes()


def test_public_key_may_be_given_a_private_key_file() -> None:
    assert _same_public(load_public_key(GO_PRIVATE), load_public_key(GO_PUBLIC))


def test_loaders_accept_str_paths_and_str_pem() -> None:
    assert isinstance(load_private_key(str(GO_PRIVATE)), ec.EllipticCurvePrivateKey)
    text = GO_PUBLIC.read_text()
    assert isinstance(load_public_key_pem(text), ec.EllipticCurvePublicKey)


# --- generation and the reference's output format ----------------------------------


def test_generated_ec_format(ec_key: ec.EllipticCurvePrivateKey) -> None:
    assert isinstance(ec_key.curve, ec.SECP256R1)
    private_pem = private_key_to_pem(ec_key)
    public_pem = public_key_to_pem(ec_key.public_key())
    assert _labels(private_pem) == ["EC PRIVATE KEY"]
    assert _labels(public_pem) == ["EC PUBLIC KEY"]
    sec1 = ec_key.private_bytes(Enc.PEM, PrivFmt.TraditionalOpenSSL, serialization.NoEncryption())
    assert private_pem == sec1
    spki = ec_key.public_key().public_bytes(Enc.PEM, PubFmt.SubjectPublicKeyInfo)
    assert public_pem == spki.replace(b"PUBLIC KEY", b"EC PUBLIC KEY")


def test_generated_rsa_format(rsa_key: rsa.RSAPrivateKey) -> None:
    private_pem = private_key_to_pem(rsa_key)
    public_pem = public_key_to_pem(rsa_key.public_key())
    assert _labels(private_pem) == ["RSA PRIVATE KEY"]
    assert _labels(public_pem) == ["PUBLIC KEY"]
    pkcs1 = rsa_key.private_bytes(Enc.PEM, PrivFmt.TraditionalOpenSSL, serialization.NoEncryption())
    assert private_pem == pkcs1
    assert public_pem == rsa_key.public_key().public_bytes(Enc.PEM, PubFmt.SubjectPublicKeyInfo)
    assert algorithm_for_key(rsa_key) == "RS256"


def test_pem_lines_are_64_columns_lf(rsa_key: rsa.RSAPrivateKey) -> None:
    pem = private_key_to_pem(rsa_key)
    assert b"\r" not in pem
    body = pem.splitlines()[1:-1]
    assert all(len(line) == 64 for line in body[:-1])
    assert 0 < len(body[-1]) <= 64
    assert pem.endswith(b"-----END RSA PRIVATE KEY-----\n")


def test_default_rsa_size_matches_reference() -> None:
    from reverse_http.auth import keys

    assert keys.DEFAULT_RSA_BITS == 4096


def test_generate_rejects_unknown_algorithm_and_small_rsa() -> None:
    with pytest.raises(ValueError, match="unsupported algorithm"):
        generate_private_key("HS256")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="below the minimum"):
        generate_private_key("RS256", rsa_bits=1024)


# --- every PEM form round-trips ----------------------------------------------------


def _private_forms(key: PrivateKey) -> list[bytes]:
    none = serialization.NoEncryption()
    traditional = key.private_bytes(Enc.DER, PrivFmt.TraditionalOpenSSL, none)
    pkcs8 = key.private_bytes(Enc.DER, PrivFmt.PKCS8, none)
    label = "EC PRIVATE KEY" if isinstance(key, ec.EllipticCurvePrivateKey) else "RSA PRIVATE KEY"
    return [_pem(label, traditional), _pem("PRIVATE KEY", pkcs8), private_key_to_pem(key)]


def _public_forms(key: PublicKey) -> list[bytes]:
    spki = key.public_bytes(Enc.DER, PubFmt.SubjectPublicKeyInfo)
    forms = [_pem("PUBLIC KEY", spki), public_key_to_pem(key)]
    if isinstance(key, ec.EllipticCurvePublicKey):
        forms.append(_pem("EC PUBLIC KEY", spki))
    else:
        forms.append(_pem("RSA PUBLIC KEY", key.public_bytes(Enc.DER, PubFmt.PKCS1)))
    return forms


def _self_signed(key: PrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reverse-http-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Enc.PEM)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_every_pem_form_round_trips(
    kind: str, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    key: PrivateKey = ec_key if kind == "ec" else rsa_key
    expected_public = key.public_key()
    for pem in _private_forms(key):
        loaded = load_private_key_pem(pem)
        assert private_key_to_pem(loaded) == private_key_to_pem(key), _labels(pem)
        assert _same_public(load_public_key_pem(pem), expected_public), _labels(pem)
    for pem in _public_forms(expected_public):
        assert _same_public(load_public_key_pem(pem), expected_public), _labels(pem)
    assert _same_public(load_public_key_pem(_self_signed(key)), expected_public)


def test_crlf_and_surrounding_text_are_tolerated() -> None:
    pem = GO_PRIVATE.read_bytes().replace(b"\n", b"\r\n")
    loaded = load_private_key_pem(b"key generated by reverse-http\r\n" + pem + b"trailer\n")
    assert private_key_to_pem(loaded) == GO_PRIVATE.read_bytes()


def test_first_key_block_wins_after_other_blocks(ec_key: ec.EllipticCurvePrivateKey) -> None:
    cert = _self_signed(ec_key)
    pem = cert + GO_PRIVATE.read_bytes()
    assert private_key_to_pem(load_private_key_pem(pem)) == GO_PRIVATE.read_bytes()


def test_files_round_trip(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    private_file = tmp_path / "k.pem"
    public_file = tmp_path / "k.pub"
    private_file.write_bytes(private_key_to_pem(rsa_key))
    public_file.write_bytes(public_key_to_pem(rsa_key.public_key()))
    assert private_key_to_pem(load_private_key(private_file)) == private_file.read_bytes()
    assert public_key_to_pem(load_public_key(public_file)) == public_file.read_bytes()


# --- refusals ----------------------------------------------------------------------


def _raises(
    loader: Callable[[bytes, str], object], data: bytes, fragment: str, source: str = "f.pem"
) -> None:
    with pytest.raises(KeyFileError) as info:
        loader(data, source)
    message = str(info.value)
    assert message.startswith(f"{source}: "), message
    assert fragment in message, message
    assert info.value.source == source
    assert "\n" not in message


def test_rejects_other_curves() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    pem = p384.private_bytes(Enc.PEM, PrivFmt.TraditionalOpenSSL, serialization.NoEncryption())
    _raises(load_private_key_pem, pem, "unsupported EC curve secp384r1")
    _raises(load_public_key_pem, public_key_to_pem(p384.public_key()), "secp384r1")


def test_rejects_small_rsa() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = small.private_bytes(Enc.PEM, PrivFmt.TraditionalOpenSSL, serialization.NoEncryption())
    _raises(load_private_key_pem, pem, "RSA key is 1024 bits (minimum 2048)")
    pub = small.public_key().public_bytes(Enc.PEM, PubFmt.SubjectPublicKeyInfo)
    _raises(load_public_key_pem, pub, "1024 bits")


def test_rejects_other_key_types() -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    pem = ed.private_bytes(Enc.PEM, PrivFmt.PKCS8, serialization.NoEncryption())
    _raises(load_private_key_pem, pem, "unsupported key type Ed25519PrivateKey")
    pub = ed.public_key().public_bytes(Enc.PEM, PubFmt.SubjectPublicKeyInfo)
    _raises(load_public_key_pem, pub, "unsupported key type Ed25519PublicKey")


def test_rejects_encrypted_keys(ec_key: ec.EllipticCurvePrivateKey) -> None:
    pkcs8 = ec_key.private_bytes(
        Enc.PEM, PrivFmt.PKCS8, serialization.BestAvailableEncryption(b"secret")
    )
    _raises(load_private_key_pem, pkcs8, "ENCRYPTED PRIVATE KEY is not supported")
    legacy = ec_key.private_bytes(
        Enc.PEM, PrivFmt.TraditionalOpenSSL, serialization.BestAvailableEncryption(b"secret")
    )
    _raises(load_private_key_pem, legacy, "encrypted")


def test_rejects_label_content_mismatch(rsa_key: rsa.RSAPrivateKey) -> None:
    der = rsa_key.private_bytes(Enc.DER, PrivFmt.TraditionalOpenSSL, serialization.NoEncryption())
    _raises(load_private_key_pem, _pem("EC PRIVATE KEY", der), "does not hold an EC key")
    ec_pub = load_public_key(GO_PUBLIC).public_bytes(Enc.DER, PubFmt.SubjectPublicKeyInfo)
    _raises(load_public_key_pem, _pem("RSA PUBLIC KEY", ec_pub), "does not hold an RSA key")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "no PEM block found"),
        (b"not a key at all", "no PEM block found"),
        (b"-----BEGIN EC PRIVATE KEY-----\n!!!!\n-----END EC PRIVATE KEY-----\n", "invalid base64"),
        (b"-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n", "not a valid"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "no private key"),
    ],
)
def test_rejects_garbage_private(data: bytes, fragment: str) -> None:
    _raises(load_private_key_pem, data, fragment)


def test_rejects_garbage_public() -> None:
    _raises(load_public_key_pem, b"-----BEGIN X-----\nAAAA\n-----END X-----\n", "no public key")
    _raises(
        load_public_key_pem, b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not"
    )
    _raises(
        load_public_key_pem,
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        "not a valid certificate",
    )


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(KeyFileError, match=r"nope\.pem: No such file or directory"):
        load_private_key(missing)
    with pytest.raises(KeyFileError, match=r"nope\.pem: No such file or directory"):
        load_public_key(missing)


def test_directory_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=re.escape(str(tmp_path))):
        load_public_key(tmp_path)


def test_key_file_error_is_a_value_error() -> None:
    assert issubclass(KeyFileError, ValueError)
