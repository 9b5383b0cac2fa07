"""The narrow path's merged rows (binary_conv_narrow.merge_rows) written into the plan function
as literal loops, for the common layout: one group, up to 64 input channels (a pixel's bits in
its one word, tail bits 0), stride 1 along the row.

A merged row holds, for output column ow, the kw taps' channel sets side by side:

    out[0, n, ihp, q, ow] = OR over taps kj of bits of x[n, ihp - ptop, ow + kj * dw - pl]
                            shifted to bit kj * cg of the row's kw * cg bits (word q = bit // 64)

and ``cg`` bits of ``fill`` where that pixel is outside the input. ``merge_rows`` reads cg, kw,
dw and the pads as arguments and pays, per row and tap, the set-up of a loop whose bounds and
shifts it computes (a row of 16 pixels is 16 words): 6.4 us for the 4 x 18 x 16 words of the
torch Bi-Real Net's first layers. Here each column run whose taps are all inside (or all the
same ones outside) is one loop with the taps' loads, shifts and the outside taps' fill bits as
constants; rows outside the input are constant rows.
"""

from __future__ import annotations

from runtime.kernels.pool_emit import runs

MAX_RUNS = 16  # column runs of a row (2 kw + 1 at most for stride 1): more go to the kernel
ALL = (1 << 64) - 1


def emittable(g: int, cg: int, x_words: int, sw: int, kw: int) -> bool:
    """Whether ``emit_merge_rows`` covers this layout."""
    return g == 1 and cg <= 64 and x_words == 1 and sw == 1 and 2 * kw + 1 <= MAX_RUNS


def _tap_words(kj: int, cg: int) -> list[tuple[int, int, int]]:
    """(word, shift, direction) of tap kj's cg bits in the merged row: direction 1 a left shift
    into word, -1 the right shift of the bits that spill into the next word."""
    pos = kj * cg
    q, off = pos >> 6, pos & 63
    out = [(q, off, 1)]
    if off and off + cg > 64:
        out.append((q + 1, 64 - off, -1))
    return out


def _fill_bits(taps: list[int], cg: int, fill: int, words: int) -> list[int]:
    """The constant part of each word: ``fill``'s cg bits for the taps listed (outside ones)."""
    fv = fill & ((1 << cg) - 1)
    const = [0] * words
    for kj in taps:
        for q, sh, direction in _tap_words(kj, cg):
            const[q] |= ((fv << sh) & ALL) if direction == 1 else fv >> sh
    return const


def emit_merge_rows(e, x: str, out: str, x4: tuple, merged_shape: tuple, cg: int, kw: int, dw: int, pl: int, ptop: int,
                    fill: int, tasks: int = 1) -> None:
    """Write merge_rows of ``x`` (N, H, W, 1 word) into ``out`` (1, N, HP, WG, OW) as literal
    loops (module docstring); the rows split over ``tasks`` threads when more than one."""
    n_, h_, w_, _ = x4
    _, _, hp, wg, ow_ = merged_shape
    fill = int(fill)
    xf, of = e.fresh("xf"), e.fresh("of")
    e.line(f"{xf} = {x}.reshape(-1)")
    e.line(f"{of} = {out}.reshape(-1)")
    if tasks > 1:
        r = e.begin_parallel([xf, of], n_ * hp, tasks, "merge")
    else:
        (r,) = e.loops((n_ * hp,))
    ih, ob = e.fresh("ih"), e.fresh("ob")
    e.line(f"{ih} = {r} % {hp} - {ptop}")
    e.line(f"{ob} = {r} * {wg * ow_}")
    inside = ptop == 0 and hp == h_  # every row reads the input
    if not inside:
        e.line(f"if {ih} < 0 or {ih} >= {h_}:")
        e.indent += 1
        for q, c in enumerate(_fill_bits(list(range(kw)), cg, fill, wg)):
            (i,) = e.loops((ow_,))
            e.line(f"{of}[{ob} + {q * ow_} + {i}] = uint64({c})")
            e.end(1)
        e.end(1)
        e.line("else:")
        e.indent += 1
    xb = e.fresh("xb")
    e.line(f"{xb} = ({r} // {hp} * {h_} + {ih}) * {w_} - {pl}")
    for c0, c1, taps, _ in runs(ow_, w_, kw, 1, dw, pl, 0):
        const = _fill_bits([kj for kj in range(kw) if kj not in taps], cg, fill, wg)
        i = e.fresh("ow")
        e.line(f"for {i} in range({c0}, {c1}):")
        e.indent += 1
        loads = {}
        for kj in taps:
            loads[kj] = e.fresh("t")
            e.line(f"{loads[kj]} = {xf}[{xb} + {i} + {kj * dw}]")
        for q in range(wg):
            terms = [f"({loads[kj]} {'<<' if d == 1 else '>>'} uint64({sh}))" if sh else loads[kj]
                     for kj in taps for qq, sh, d in _tap_words(kj, cg) if qq == q]
            if const[q] or not terms:
                terms.append(f"uint64({const[q]})")
            e.line(f"{of}[{ob} + {q * ow_} + {i}] = " + " | ".join(terms))
        e.end(1)
    if not inside:
        e.end(1)
    if tasks > 1:
        e.end_parallel()
    else:
        e.end(1)
