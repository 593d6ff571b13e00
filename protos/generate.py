"""Regenerates the Python gRPC stubs from protos/ into gasgd_tf/proto/.

Run from anywhere: ``python protos/generate.py`` (or ``make protos``). With
``--check`` it generates into a temporary folder and exits 1 when the
committed stubs differ, which is what the test suite runs.

The proto path mirrors the package path (protos/gasgd_tf/proto/*.proto), so
the generated imports (``from gasgd_tf.proto import ...``) work unchanged.
"""

import argparse
import difflib
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = pathlib.Path("gasgd_tf") / "proto"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out_root: pathlib.Path) -> list[pathlib.Path]:
    """Runs protoc for every .proto under protos/ and returns the files written."""
    sources = sorted(PROTO_ROOT.rglob("*.proto"))
    if not sources:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    (out_root / OUT_PACKAGE).mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(s.relative_to(PROTO_ROOT)) for s in sources],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(
        p for p in (out_root / OUT_PACKAGE).iterdir() if p.name.endswith(GENERATED_SUFFIXES)
    )


def check() -> int:
    """Returns 0 when the committed stubs equal freshly generated ones, else 1."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(pathlib.Path(tmp))
        committed = ROOT / OUT_PACKAGE
        stale = []
        for path in fresh:
            target = committed / path.name
            new = path.read_text().splitlines(keepends=True)
            old = target.read_text().splitlines(keepends=True) if target.exists() else []
            if new != old:
                stale.append(path.name)
                sys.stdout.writelines(difflib.unified_diff(old, new, str(target), "fresh", n=1))
        extra = {p.name for p in committed.glob("*") if p.name.endswith(GENERATED_SUFFIXES)}
        extra -= {p.name for p in fresh}
        stale.extend(sorted(extra))
    if stale:
        print(f"stale generated files: {', '.join(stale)}; run: python protos/generate.py")
        return 1
    print("generated stubs are up to date")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    if parser.parse_args().check:
        return check()
    with tempfile.TemporaryDirectory() as tmp:
        for path in generate(pathlib.Path(tmp)):
            shutil.copyfile(path, ROOT / OUT_PACKAGE / path.name)
            print(f"wrote {OUT_PACKAGE / path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
