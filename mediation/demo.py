"""The main job, end to end on loopback with the embedded defaults.

Until the mediation service exists this decodes the golden fixture PDUs,
one of every kind, as the agency's analyst would with ``mediate decode``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mediation.cli.main import main as mediate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "golden"


def main(argv: list[str] | None = None) -> int:
    files = sorted(str(p) for p in FIXTURES.glob("*.hex"))
    if not files:
        print(f"demo: no fixtures in {FIXTURES}", file=sys.stderr)
        return 1
    print(f"demo: decoding {len(files)} golden PDUs with `mediate decode --hex --pretty`")
    return mediate(["decode", "--hex", "--pretty", *files])


if __name__ == "__main__":
    raise SystemExit(main())
