"""Per-module mutation scores from ``mutmut results --all true`` (stdin); used by make mutation.

Prints, for each module, killed / all mutants and the survivors' names (``mutmut show NAME``
prints a survivor's diff). A timeout counts as killed: the mutant made a test hang, so it was
detected. Exits 1 when a module scores below the percentage given as the first argument.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict

KILLED = {"killed", "timeout"}
LINE = re.compile(r"^\s*(?P<module>[\w.]+)\.x[_ǁ]\S*: (?P<status>.+)$")


def main() -> int:
    minimum = float(sys.argv[1]) if len(sys.argv) > 1 else 95.0
    verdicts: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for line in sys.stdin:
        m = LINE.match(line.rstrip("\n"))
        if m:
            name = line.split(":")[0].strip()
            verdicts[m["module"]].append((name, m["status"].strip()))
    if not verdicts:
        print("no mutant results read", file=sys.stderr)
        return 1
    failed = False
    for module in sorted(verdicts):
        results = verdicts[module]
        killed = sum(status in KILLED for _, status in results)
        score = 100.0 * killed / len(results)
        failed |= score < minimum
        print(f"{module}: {killed}/{len(results)} killed, {score:.1f}%")
        for name, status in results:
            if status not in KILLED:
                print(f"    {status:10} {name}")
    if failed:
        print(f"a module scores below {minimum:g}%", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
