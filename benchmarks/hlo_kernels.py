"""Where the kernels of a compiled step are: per computation that runs (the entry, each loop body), the
fusions the compiler generates code for, by kind and by name, and the loops it calls.

    python -m semrel_jax.aot --config=configs/vqa.py:lsrm_7b --topology=v5e:2x4 ... --hlo_out=/tmp/step.hlo
    python benchmarks/hlo_kernels.py /tmp/step.hlo

On the TPU compiler most of a big step's compile time is spent generating each fusion's code (the LLO
passes, register allocation and bundle packing, see RESULTS.md), so the number of fusions, and where they
come from, is what a compile-time change has to move. Reads the HLO text only (no JAX needed).
"""

from __future__ import annotations

import collections
import re
import sys


def computations(text: str) -> tuple[dict[str, list[str]], str]:
    """``{name: instruction lines}`` of every computation in an HLO module's text, and the entry's name."""
    comps, entry, current = {}, "", None
    for line in text.splitlines():
        header = re.match(r"^(ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header:
            current = header.group(2)
            comps[current] = []
            entry = current if header.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current:
            comps[current].append(line)
    return comps, entry


def kernel_table(text: str) -> list[dict]:
    """One row per computation that is not itself a fusion's body: its fusions (kernels) by kind and name
    stem, its loops, collectives, and the summed instruction count of the fused computations it calls."""
    comps, entry = computations(text)
    fused = {m.group(1) for lines in comps.values() for line in lines if " fusion(" in line
             for m in [re.search(r"calls=%?([\w.\-]+)", line)] if m}
    rows = []
    for name, lines in comps.items():
        if name in fused:
            continue
        fusions = [line for line in lines if " fusion(" in line]
        if not fusions:
            continue
        called = [re.search(r"calls=%?([\w.\-]+)", line) for line in fusions]
        rows.append(dict(
            computation=name, entry=name == entry, fusions=len(fusions),
            fused_instructions=sum(len(comps.get(m.group(1), ())) for m in called if m),
            kinds=collections.Counter(m.group(1) for line in fusions for m in [re.search(r"kind=(\w+)", line)] if m),
            stems=collections.Counter(re.sub(r"(\.\d+|\.clone)+$", "", line.split("=", 1)[0].strip().lstrip("%"))
                                      for line in fusions),
            loops=sum(" while(" in line for line in lines),
        ))
    return sorted(rows, key=lambda r: -r["fusions"])


def main(path: str) -> None:
    with open(path) as f:
        rows = kernel_table(f.read())
    print(f"{sum(r['fusions'] for r in rows)} fusions (kernels) in {len(rows)} computations")
    for r in rows[:20]:
        print(f"{r['fusions']:5d} fusions ({r['fused_instructions']:6d} fused instructions, {r['loops']} loops) "
              f"{'ENTRY ' if r['entry'] else ''}{r['computation'][:60]}: {dict(r['kinds'])}")
        if r["entry"]:
            print("      by name:", ", ".join(f"{k} {v}" for k, v in r["stems"].most_common(8)))


if __name__ == "__main__":
    main(sys.argv[1])
