"""The committed generated code matches what `python -m protos.generate` writes."""

from __future__ import annotations

from pathlib import Path

from protos.generate import ROOT, generate


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert fresh, "protoc generated nothing"
    for path in fresh:
        committed = ROOT / "protos" / path.name
        assert committed.exists(), f"{path.name} is not committed: run python -m protos.generate"
        assert committed.read_text() == path.read_text(), (
            f"protos/{path.name} is stale: run python -m protos.generate"
        )
