"""The development CA: certificates name node, site and trust; the CLI makes them."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from node.ca import NODE_NAME, TRUST_NAMES, CaError, Identity, identity_of, init_ca, issue
from node.cli import main
from registry.records import Trust


def test_issued_certificates_name_node_site_and_trust(tmp_path: Path) -> None:
    init_ca(tmp_path)
    cert, key = issue(tmp_path, "partner-c-n1", "partner-c", Trust.PARTNER)
    pem = cert.read_bytes()
    assert identity_of(pem) == Identity("partner-c-n1", "partner-c", Trust.PARTNER)
    names = x509.load_pem_x509_certificate(pem).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    dns = set(names.value.get_values_for_type(x509.DNSName))
    assert dns == {NODE_NAME, TRUST_NAMES[Trust.PARTNER]}
    assert key.stat().st_mode & 0o077 == 0, "the key is readable by its owner only"


def test_the_ca_refuses_to_overwrite_itself_and_bad_names(tmp_path: Path) -> None:
    init_ca(tmp_path)
    with pytest.raises(CaError, match="exists"):
        init_ca(tmp_path)
    with pytest.raises(CaError, match="node id"):
        issue(tmp_path, "../etc/passwd", "site-a", Trust.INHOUSE)
    with pytest.raises(CaError, match="no usable CA"):
        issue(tmp_path / "missing", "n1", "site-a", Trust.INHOUSE)
    with pytest.raises(CaError, match="lacks"):
        identity_of((tmp_path / "ca.pem").read_bytes())  # the CA names no node


def test_cli_makes_a_ca_and_a_node_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["ca", "init", str(tmp_path)],
        ["ca", "issue", str(tmp_path), "--node", "n1", "--site", "site-a", "--trust", "inhouse"],
    ):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
    assert identity_of((tmp_path / "n1.pem").read_bytes()) == Identity(
        "n1", "site-a", Trust.INHOUSE
    )
    assert "n1.key" in capsys.readouterr().out
