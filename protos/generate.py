"""Regenerate the Python code beside the .proto files: `python -m protos.generate`.

The code is generated with the pinned grpcio-tools and typed with mypy-protobuf. The tests call
`generate()` into a temporary folder and fail when the committed files differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "protos").glob("*.proto"))
_INCLUDE = str(Path(protoc.__file__).parent / "_proto")
_BIN = Path(sys.executable).parent


def generate(out_dir: Path) -> list[Path]:
    """Write the generated modules for every proto under `out_dir`/protos; return their paths."""
    (out_dir / "protos").mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{_INCLUDE}",
        f"--plugin=protoc-gen-mypy={_BIN / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={_BIN / 'protoc-gen-mypy_grpc'}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return sorted(p for p in (out_dir / "protos").iterdir() if "_pb2" in p.name)


def main() -> None:
    for path in generate(ROOT):
        print(path.relative_to(ROOT))


if __name__ == "__main__":
    main()
    sys.exit(0)
