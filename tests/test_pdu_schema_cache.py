"""mediation/pdu/schema.py: the kept parse of the ASN.1 modules is what a fresh parse gives."""

from __future__ import annotations

import shutil
from pathlib import Path

import asn1tools
import pytest

from mediation.pdu import schema

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("names", schema.KEPT_SETS)
def test_the_kept_parse_equals_a_fresh_parse_of_the_modules(names: tuple[str, ...]) -> None:
    """Fails after a module is edited until the parse is kept again
    (``schema.write_kept_parse()``); the running code parses afresh meanwhile."""
    fresh = asn1tools.parse_files([str(ROOT / "asn1" / name) for name in names])
    kept = schema._kept_parse(names, schema._module_text(names))
    assert kept is not None, "asn1/parsed.json is stale: run schema.write_kept_parse()"
    assert kept == fresh


def test_compiling_from_the_kept_parse_does_not_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object) -> None:
        raise AssertionError("parsed afresh")

    monkeypatch.setattr(asn1tools, "parse_string", refuse)
    spec = schema.compile_modules(("Mediation-TapLink.asn",))
    message = ("keepalive", {"id": 7})
    assert spec.decode("TapLinkMessage", spec.encode("TapLinkMessage", message)) == message


def test_a_module_whose_text_changed_is_parsed_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(ROOT / "asn1", tmp_path / "asn1")
    module = tmp_path / "asn1" / "Mediation-TapLink.asn"
    old = "    id  [0] INTEGER (0..4294967295),"
    module.write_text(module.read_text().replace(old, "    id  [0] INTEGER (0..9),"))
    monkeypatch.setenv("MEDIATION_ASN1_DIR", str(tmp_path / "asn1"))
    names = ("Mediation-TapLink.asn",)
    assert schema._kept_parse(names, schema._module_text(names)) is None
    spec = schema.compile_modules(names)
    with pytest.raises(asn1tools.Error):  # the edited constraint holds: not the kept parse
        spec.encode("TapLinkMessage", ("keepalive", {"id": 10}), check_constraints=True)


def test_an_unreadable_kept_parse_falls_back_to_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(ROOT / "asn1", tmp_path / "asn1")
    (tmp_path / "asn1" / schema.PARSED_FILE).write_text("{not json")
    monkeypatch.setenv("MEDIATION_ASN1_DIR", str(tmp_path / "asn1"))
    names = ("Mediation-TapLink.asn",)
    assert schema._kept_parse(names, schema._module_text(names)) is None
    assert schema.compile_modules(names).encode("TapLinkMessage", ("keepalive", {"id": 1}))
