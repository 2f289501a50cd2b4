"""Test certificates made with the ``openssl`` command line: two CAs and leaf certificates.

``make_pki(folder)`` writes, for CA ``ca`` (trusted) and CA ``other`` (not trusted):

- ``ca.pem``: the trusted CA's certificate (the bundle every process verifies with);
- ``a.pem`` / ``a.key``, ``b.pem`` / ``b.key``: leaves signed by ``ca`` (server and client use);
- ``a-both.pem``: ``a.key`` and ``a.pem`` in one file (Monarch's ``private_key`` form);
- ``x.pem`` / ``x.key``: a leaf signed by ``other``; ``other.pem``: that CA.

EC P-256 keys: the whole set takes well under a second.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

_EXT = """basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
"""


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=30)


def _key(path: Path) -> None:
    _run("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path))


def _ca(d: Path, name: str) -> None:
    _key(d / f"{name}.key")
    _run(
        "req",
        "-x509",
        "-new",
        "-key",
        str(d / f"{name}.key"),
        "-subj",
        f"/CN=monarch test {name} CA",
        "-days",
        "2",
        "-out",
        str(d / f"{name}.pem"),
    )


def _leaf(d: Path, name: str, ca: str) -> None:
    _key(d / f"{name}.key")
    _run(
        "req",
        "-new",
        "-key",
        str(d / f"{name}.key"),
        "-subj",
        f"/CN=monarch test {name}",
        "-out",
        str(d / f"{name}.csr"),
    )
    (d / "ext.cnf").write_text(_EXT)
    _run(
        "x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / f"{ca}.pem"), "-CAkey", str(d / f"{ca}.key"),
        "-CAcreateserial", "-days", "2", "-extfile", str(d / "ext.cnf"), "-out", str(d / f"{name}.pem"),
    )  # fmt: skip


def make_pki(d: Path) -> Path:
    """Write the files listed in the module docstring into ``d``; returns ``d``."""
    d.mkdir(parents=True, exist_ok=True)
    _ca(d, "ca")
    _ca(d, "other")
    for leaf in ("a", "b"):
        _leaf(d, leaf, "ca")
    _leaf(d, "x", "other")
    (d / "a-both.pem").write_bytes((d / "a.key").read_bytes() + (d / "a.pem").read_bytes())
    return d
