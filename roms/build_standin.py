"""Build roms/standin.gb: our own Game Boy cartridge that stands in for Pokemon Red in tests.

Pure Python, no toolchain: a small SM83 assembler, then the game written in assembly, its tile
graphics and its maps. The game keeps its state at Pokemon Red's RAM addresses so that the
environment reads it exactly as it would read the real game (see roms/README.md).

    python roms/build_standin.py          # writes roms/standin.gb next to this file
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

# =============================================================================================
# The assembler
#
# One instruction or directive per line; `Label:` defines a global label and `.name:` a label
# local to the last global one. Numbers are `$FF` (hex), `%0101` (binary) or decimal; operands
# are Python expressions over the symbol table, so data made in Python (tiles, text) goes in with
# `db NAME`. Directives: `db`, `dw`, `ds count`, `org address`. Every instruction's size follows
# from its syntax alone, so pass 1 lays out the labels and pass 2 encodes.
# =============================================================================================

R8 = {"b": 0, "c": 1, "d": 2, "e": 3, "h": 4, "l": 5, "[hl]": 6, "a": 7}
R16 = {"bc": 0, "de": 1, "hl": 2, "sp": 3}
R16_STACK = {"bc": 0, "de": 1, "hl": 2, "af": 3}
CONDITIONS = {"nz": 0, "z": 1, "nc": 2, "c": 3}
ALU = {"add": 0, "adc": 1, "sub": 2, "sbc": 3, "and": 4, "xor": 5, "or": 6, "cp": 7}
CB_SHIFTS = {"rlc": 0, "rrc": 1, "rl": 2, "rr": 3, "sla": 4, "sra": 5, "swap": 6, "srl": 7}
CB_BITS = {"bit": 1, "res": 2, "set": 3}
NO_OPERANDS = {
    "nop": [0x00], "halt": [0x76], "di": [0xF3], "ei": [0xFB], "ret": [0xC9], "reti": [0xD9],
    "rlca": [0x07], "rrca": [0x0F], "rla": [0x17], "rra": [0x1F], "daa": [0x27], "cpl": [0x2F],
    "scf": [0x37], "ccf": [0x3F], "stop": [0x10, 0x00],
}
A_INDIRECT = {"[bc]": 0x02, "[de]": 0x12, "[hl+]": 0x22, "[hli]": 0x22, "[hl-]": 0x32, "[hld]": 0x32}


class AsmError(Exception):
    pass


class Lenient(dict):
    """Pass-1 namespace: labels not yet placed read as 0 (sizes never depend on values)."""

    def __missing__(self, key):
        return 0


def split_operands(text: str) -> list[str]:
    """Split on commas outside brackets and parentheses."""
    parts, depth, current = [], 0, ""
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def assemble(source: str, symbols: dict, size: int) -> tuple[bytes, dict]:
    """Assemble `source` into a `size`-byte image (unused bytes $00); also return the labels."""
    lines, scope = [], ""
    for number, raw in enumerate(source.splitlines(), 1):
        text = raw.split(";", 1)[0].rstrip()
        match = re.match(r"^(\.?[A-Za-z_]\w*):", text)
        label = None
        if match:
            name = match.group(1)
            if name.startswith("."):
                label = f"{scope}__{name[1:]}"
            else:
                scope = label = name
            text = text[match.end():]
        text = text.strip()
        # Locals, $hex and %binary become Python before evaluation.
        text = re.sub(r"(?<![\w.])\.([A-Za-z_]\w*)", lambda m: f"{scope}__{m.group(1)}", text)
        text = re.sub(r"\$([0-9A-Fa-f]+)", r"0x\1", text)
        text = re.sub(r"%([01]+)", r"0b\1", text)
        mnemonic, _, operands = text.partition(" ")
        lines.append((number, raw, label, mnemonic.lower(), split_operands(operands)))

    def run(namespace, final):
        pc, out = 0, bytearray(size)
        for number, raw, label, mnemonic, operands in lines:
            if label and not final:
                if label in labels:
                    raise AsmError(f"line {number}: label {label} defined twice")
                labels[label] = namespace[label] = pc
            if not mnemonic:
                continue
            try:
                data = encode(mnemonic, operands, namespace, pc, check=final)
            except AsmError as err:
                raise AsmError(f"line {number}: {raw.strip()}: {err}") from None
            if mnemonic == "org":
                target = evaluate(operands[0], namespace)
                if target < pc:
                    raise AsmError(f"line {number}: org ${target:04X} is behind ${pc:04X}")
                pc = target
                continue
            if pc + len(data) > size:
                raise AsmError(f"line {number}: the program does not fit in {size} bytes")
            out[pc:pc + len(data)] = data
            pc += len(data)
        return bytes(out)

    labels: dict[str, int] = {}
    run(Lenient(symbols), final=False)
    clashes = set(labels) & set(symbols)
    if clashes:
        raise AsmError(f"labels shadow symbols: {sorted(clashes)}")
    return run({**symbols, **labels}, final=True), labels


def evaluate(expr: str, namespace):
    try:
        return eval(expr, {"__builtins__": {}}, namespace)  # noqa: S307 (our own source)
    except Exception as err:  # noqa: BLE001
        raise AsmError(f"cannot evaluate {expr!r}: {err}") from None


def encode(mnemonic: str, ops: list[str], ns, pc: int, check: bool) -> list[int]:
    low = [op.lower().replace(" ", "") for op in ops]

    def value(i, bits=8):
        v = evaluate(ops[i], ns)
        if not isinstance(v, int):
            raise AsmError(f"{ops[i]!r} is not a number")
        lo, hi = -(1 << (bits - 1)), (1 << bits) - 1  # negative numbers are two's complement
        if check and not lo <= v <= hi:
            raise AsmError(f"{ops[i]!r} = {v} does not fit in {bits} bits")
        return v & ((1 << bits) - 1)

    def word(i):
        v = value(i, 16)
        return [v & 0xFF, v >> 8]

    def is_memory(i):
        return low[i].startswith("[") and low[i].endswith("]") and low[i] not in R8 \
            and low[i] not in A_INDIRECT and low[i] != "[c]"

    def memory_word(i):
        v = evaluate(ops[i].strip()[1:-1], ns)
        if check and not 0 <= v <= 0xFFFF:
            raise AsmError(f"address {v} out of range")
        return [v & 0xFF, (v >> 8) & 0xFF]

    def relative(i):
        target = value(i, 16)
        offset = target - (pc + 2)
        if check and not -128 <= offset <= 127:
            raise AsmError(f"jr target {ops[i]} is {offset} bytes away")
        return offset & 0xFF

    n = len(ops)
    if mnemonic == "db":
        out = []
        for i in range(n):
            v = evaluate(ops[i], ns)
            out += list(v) if isinstance(v, (bytes, bytearray, list, tuple)) else [value(i)]
        return out
    if mnemonic == "dw":
        out = []
        for i in range(n):
            v = evaluate(ops[i], ns)
            for w in (v if isinstance(v, (list, tuple)) else [v]):
                out += [w & 0xFF, (w >> 8) & 0xFF]
        return out
    if mnemonic == "ds":
        return [0] * evaluate(ops[0], ns)
    if mnemonic == "org":
        return []
    if mnemonic in NO_OPERANDS and n == 0:
        return NO_OPERANDS[mnemonic]
    if mnemonic == "ret" and n == 1:
        return [0xC0 + 8 * CONDITIONS[low[0]]]
    if mnemonic == "ld" and n == 2:
        d, s = low
        if d in R8 and s in R8 and not (d == s == "[hl]"):
            return [0x40 + 8 * R8[d] + R8[s]]
        if d == "a" and s in A_INDIRECT:
            return [A_INDIRECT[s] + 8]
        if s == "a" and d in A_INDIRECT:
            return [A_INDIRECT[d]]
        if d == "a" and s == "[c]":
            return [0xF2]
        if d == "[c]" and s == "a":
            return [0xE2]
        if d == "sp" and s == "hl":
            return [0xF9]
        if d == "a" and is_memory(1):
            return [0xFA] + memory_word(1)
        if s == "a" and is_memory(0):
            return [0xEA] + memory_word(0)
        if s == "sp" and is_memory(0):
            return [0x08] + memory_word(0)
        if d in R8:
            return [0x06 + 8 * R8[d], value(1)]
        if d in R16:
            return [0x01 + 16 * R16[d]] + word(1)
    if mnemonic == "ldh" and n == 2:
        def high(i):
            v = evaluate(ops[i].strip()[1:-1], ns)
            if check and not (0xFF00 <= v <= 0xFFFF or 0 <= v <= 0xFF):
                raise AsmError(f"{ops[i]} is not in $FF00-$FFFF")
            return v & 0xFF
        if low[0] == "a":
            return [0xF0, high(1)]
        if low[1] == "a":
            return [0xE0, high(0)]
    if mnemonic in ALU:
        if mnemonic == "add" and n == 2 and low[0] == "hl":
            return [0x09 + 16 * R16[low[1]]]
        if n == 2:
            if low[0] != "a":
                raise AsmError("the first operand must be a")
            ops, low, n = ops[1:], low[1:], 1
        if n == 1:
            if low[0] in R8:
                return [0x80 + 8 * ALU[mnemonic] + R8[low[0]]]
            return [0xC6 + 8 * ALU[mnemonic], value(0)]
    if mnemonic in ("inc", "dec") and n == 1:
        if low[0] in R8:
            return [(0x04 if mnemonic == "inc" else 0x05) + 8 * R8[low[0]]]
        if low[0] in R16:
            return [(0x03 if mnemonic == "inc" else 0x0B) + 16 * R16[low[0]]]
    if mnemonic in ("push", "pop") and n == 1:
        return [(0xC5 if mnemonic == "push" else 0xC1) + 16 * R16_STACK[low[0]]]
    if mnemonic == "jp":
        if n == 1 and low[0] in ("hl", "[hl]"):
            return [0xE9]
        if n == 1:
            return [0xC3] + word(0)
        return [0xC2 + 8 * CONDITIONS[low[0]]] + word(1)
    if mnemonic == "call":
        if n == 1:
            return [0xCD] + word(0)
        return [0xC4 + 8 * CONDITIONS[low[0]]] + word(1)
    if mnemonic == "jr":
        if n == 1:
            return [0x18, relative(0)]
        return [0x20 + 8 * CONDITIONS[low[0]], relative(1)]
    if mnemonic == "rst" and n == 1:
        return [0xC7 + value(0)]
    if mnemonic in CB_SHIFTS and n == 1:
        return [0xCB, 8 * CB_SHIFTS[mnemonic] + R8[low[0]]]
    if mnemonic in CB_BITS and n == 2:
        bit = value(0)
        if check and bit > 7:
            raise AsmError("bit number above 7")
        return [0xCB, 64 * CB_BITS[mnemonic] + 8 * bit + R8[low[1]]]
    raise AsmError(f"unknown instruction {mnemonic} {', '.join(ops)}")


# =============================================================================================
# Characters: the real game's encoding for the bytes the environment reads
# ($80-$99 'A'-'Z', $F6-$FF '0'-'9', $7F space, $50 end, $EE the prompt arrow, $ED the cursor).
# =============================================================================================

CHARS = {" ": 0x7F, "'": 0xE0, "-": 0xE3, "?": 0xE6, "!": 0xE7, ".": 0xE8, "/": 0xF3, ",": 0xF4,
         ":": 0x9C}
CHARS.update({chr(ord("A") + i): 0x80 + i for i in range(26)})
CHARS.update({chr(ord("0") + i): 0xF6 + i for i in range(10)})
CURSOR, PROMPT_ARROW, SPACE = 0xED, 0xEE, 0x7F
BOX = {"top_left": 0x79, "horizontal": 0x7A, "top_right": 0x7B, "vertical": 0x7C,
       "bottom_left": 0x7D, "bottom_right": 0x7E}
# Text control codes, handled by PrintString/ShowText.
END, LINE2, PARAGRAPH, PLAYER, RIVAL, LEVEL, FOE = 0x50, 0x4F, 0x51, 0x52, 0x53, 0x54, 0x55
TEXT_WIDTH = 18  # characters between the box borders
PLACEHOLDERS = {"<PLAYER>": (PLAYER, 7), "<RIVAL>": (RIVAL, 7), "<LV>": (LEVEL, 3), "<FOE>": (FOE, 8)}


def text(message: str) -> bytes:
    """Encode a message: '\\n' is the box's second line, '\\f' a new box after a prompt."""
    out, width = [], 0
    for token in re.split(r"(<[A-Z]+>|\n|\f)", message):
        if token in PLACEHOLDERS:
            out.append(PLACEHOLDERS[token][0])
            width += PLACEHOLDERS[token][1]
        elif token in ("\n", "\f"):
            out.append(LINE2 if token == "\n" else PARAGRAPH)
            width = 0
        else:
            out += [CHARS[ch] for ch in token]
            width += len(token)
        if width > TEXT_WIDTH:
            raise ValueError(f"text line too long: {message!r}")
    return bytes(out + [END])


# =============================================================================================
# Graphics. Pixels are '.', '+', 'o', '#' for shades 0-3 (white to black; 0 is transparent in
# sprites). Tiles are 8x8; the map's 16x16 blocks (one step each) are 2x2 tiles.
# =============================================================================================

SHADES = {".": 0, "+": 1, "o": 2, "#": 3}


def tile_bytes(rows: list[str]) -> bytes:
    """One 8x8 tile in the Game Boy's 2 bits per pixel planar format."""
    out = bytearray()
    for row in rows:
        lo = hi = 0
        for x, ch in enumerate(row):
            shade = SHADES[ch]
            lo |= (shade & 1) << (7 - x)
            hi |= (shade >> 1) << (7 - x)
        out += bytes([lo, hi])
    return bytes(out)


def split_tiles(art: str) -> list[bytes]:
    """Cut a picture (rows of equal length, multiples of 8) into tiles, row by row."""
    rows = art.split()
    tiles = []
    for ty in range(0, len(rows), 8):
        for tx in range(0, len(rows[0]), 8):
            tiles.append(tile_bytes([r[tx:tx + 8] for r in rows[ty:ty + 8]]))
    return tiles


# 5x7 font, drawn in the top-left of each 8x8 tile.
FONT = {
    "A": ".###. #...# #...# ##### #...# #...# #...#", "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.", "D": "####. #...# #...# #...# #...# #...# ####.",
    "E": "##### #.... #.... ####. #.... #.... #####", "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####", "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.", "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#", "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#", "N": "#...# ##..# #.#.# #..## #...# #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.", "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#", "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".###. #...# #.... .###. ....# #...# .###.", "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.", "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# ##.## #...#", "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..", "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.", "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####", "3": ".###. #...# ....# ..##. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.", "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": ".###. #.... #.... ####. #...# #...# .###.", "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.", "9": ".###. #...# #...# .#### ....# ....# .###.",
    "!": "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..", "?": ".###. #...# ....# ..##. ..#.. ..... ..#..",
    ".": "..... ..... ..... ..... ..... ..... ..#..", ",": "..... ..... ..... ..... ..... ..#.. .#...",
    "'": "..#.. ..#.. .#... ..... ..... ..... .....", "-": "..... ..... ..... ##### ..... ..... .....",
    ":": "..... ..#.. ..... ..... ..... ..#.. .....", "/": "....# ....# ...#. ..#.. .#... #.... #....",
    " ": "..... ..... ..... ..... ..... ..... .....",
}
CURSOR_GLYPH = "#.... ##... ###.. ####. ###.. ##... #...."
ARROW_GLYPH = "..... ..... ##### .###. ..#.. ..... ....."


def glyph(rows5x7: str) -> bytes:
    return tile_bytes(["." + row + ".." for row in rows5x7.split()] + ["........"])


def box_tile(up: bool, down: bool, left: bool, right: bool) -> bytes:
    """Box-drawing tile: 2-pixel lines from the centre towards the named sides."""
    rows = []
    for y in range(8):
        row = ""
        for x in range(8):
            vertical = x in (3, 4) and ((up and y <= 4) or (down and y >= 3))
            horizontal = y in (3, 4) and ((left and x <= 4) or (right and x >= 3))
            row += "#" if vertical or horizontal else "."
        rows.append(row)
    return tile_bytes(rows)


# The player, 16x16, facing down, up and left (right is left mirrored).
PLAYER_ART = {
    "down": """
    ......####...... ....##oooo##.... ...#oooooooo#... ...#oooooooo#...
    ..#oo######oo#.. ..#o#++++++#o#.. ...#+#++++#+#... ...#++++++++#...
    ....#++++++#.... ...##oooooo##... ..#+#oooooo#+#.. ..#+#oooooo#+#..
    ...##oooooo##... ....#++##++#.... ....#oo##oo#.... .....##..##.....""",
    "up": """
    ......####...... ....##oooo##.... ...#oooooooo#... ...#oooooooo#...
    ..#oooooooooo#.. ..#oooooooooo#.. ...#oooooooo#... ...#+oooooo+#...
    ....#++++++#.... ...##oooooo##... ..#+#oooooo#+#.. ..#+#oooooo#+#..
    ...##oooooo##... ....#++##++#.... ....#oo##oo#.... .....##..##.....""",
    "left": """
    ......####...... ....##oooo##.... ...#oooooooo#... ..#ooooooooo#...
    .#oo#####oooo#.. .#+#+++++#ooo#.. ..#+#++++#oo#... ..#+++++++#o#...
    ...#++++++#..... ...#oooooo#..... ...#oooo+o#..... ...#oooo+o#.....
    ...#oooooo#..... ....#+++#....... ....#oooo#...... .....####.......""",
}

# Map blocks (16x16). Names match the cell types below.
BLOCK_ART = {
    "floor": """
    ++++++++++++++++ ................ ................ ................
    ++++++++++++++++ ................ ................ ................
    ++++++++++++++++ ................ ................ ................
    ++++++++++++++++ ................ ................ ................""",
    "wall": """
    ################ #oooooo##oooooo# #oooooo##oooooo# ################
    ooo##oooooo##ooo ooo##oooooo##ooo ################ #oooooo##oooooo#
    #oooooo##oooooo# ################ ooo##oooooo##ooo ooo##oooooo##ooo
    ################ #oooooo##oooooo# #oooooo##oooooo# ################""",
    "path": """
    ................ ................ ..+............. ................
    ................ ..........+..... ................ ................
    ................ ................ .....+.......... ................
    ................ ............+... ................ ................""",
    "tree": """
    .....######..... ...##oooooo##... ..#oooooooooo#.. .#oo+ooooooooo#.
    .#o+++oooooooo#. #oo++ooooooooo## #ooooooooooo+oo# #ooooooooooo+oo#
    .#oooooooooooo#. .#ooooooooooo#.. ..##oooooooo##.. ....###oo###....
    ......#oo#...... ......#oo#...... .....#oooo#..... ....########....""",
    "grass": """
    ................ .#...#...#...#.. .#.#.#.#.#.#.#.. o+o+o+o+o+o+o+o+
    ++++++++++++++++ ................ ...#...#...#...# ..#.#.#.#.#.#.#. 
    .o+o+o+o+o+o+o+o ++++++++++++++++ ................ .#...#...#...#..
    .#.#.#.#.#.#.#.. o+o+o+o+o+o+o+o+ ++++++++++++++++ ................""",
    "door": """
    ++++++++++++++++ +##############+ +#oooooooooooo#+ +#oooooooooooo#+
    +#oooooooooooo#+ +#oooooooooooo#+ +#oooooooooooo#+ +#oooooooooo#o#+
    +#oooooooooo#o#+ +#oooooooooooo#+ +#oooooooooooo#+ +#oooooooooooo#+
    +#oooooooooooo#+ +#oooooooooooo#+ +#oooooooooooo#+ +##############+""",
    "stairs": """
    ################ #++++++++++++++# ################ ................
    ################ #++++++++++++++# ################ ................
    ################ #++++++++++++++# ################ ................
    ################ #++++++++++++++# ################ ................""",
    "bed": """
    .##############. .#............#. .#..########..#. .#..#......#..#.
    .#..########..#. .#............#. .##############. .#oooooooooooo#.
    .#o+o+o+o+o+o+#. .#+o+o+o+o+o+o#. .#o+o+o+o+o+o+#. .#+o+o+o+o+o+o#.
    .#o+o+o+o+o+o+#. .#+o+o+o+o+o+o#. .##############. .#............#.""",
    "sign": """
    ................ .##############. .#++++++++++++#. .#+##+####+##+#.
    .#++++++++++++#. .#+####+###+#+#. .#++++++++++++#. .##############.
    ......#oo#...... ......#oo#...... ......#oo#...... ......#oo#......
    ......#oo#...... ......#oo#...... .....######..... ................""",
    "npc": """
    ......####...... ....##++++##.... ...#++++++++#... ...#++++++++#...
    ..#++######++#.. ..#+#......#+#.. ...#.#....#.#... ...#........#...
    ....#......#.... ...##++++++##... ..#.#++++++#.#.. ..#.#++++++#.#..
    ...##++++++##... ....#..##..#.... ....#oo##oo#.... .....##..##.....""",
    "leader": """
    .....######..... ....#oooooo#.... ...#oooooooo#... ...#o######o#...
    ..#o#++++++#o#.. ..#o#+#++#+#o#.. ...#+######+#... ...#++++++++#...
    ....#++++++#.... ..###oooooo###.. .#oo#oooooo#oo#. .#oo#oooooo#oo#.
    ..##########.... ....#oo##oo#.... ....#oo##oo#.... .....##..##.....""",
    "roof": """
    ################ #oooooo##oooooo# ##oooooo##oooooo ###oooooo##ooooo
    ####oooooo##oooo #####oooooo##ooo ######oooooo##oo #######oooooo##o
    ################ #oooooo##oooooo# ##oooooo##oooooo ###oooooo##ooooo
    ####oooooo##oooo #####oooooo##ooo ######oooooo##oo ################""",
    "housewall": """
    ++++++++++++++++ +..............+ +..#######.....+ +..#+++++#.....+
    +..#+++++#.....+ +..#######.....+ +..............+ +..............+
    ++++++++++++++++ +..............+ +..............+ +..............+
    +..............+ +..............+ +..............+ ++++++++++++++++""",
    "pc": """
    ................ .##############. .#oooooooooooo#. .#o++++++++++o#.
    .#o+#+#+++++o#.. .#o++++++++++o#. .#o+#+++#+++o#.. .#oooooooooooo#.
    .##############. .......##....... .....######..... ...##########...
    ...#++++++++#... ...#++++++++#... ...##########... ................""",
    "table": """
    ................ ................ .##############. .#oooooooooooo#.
    .#oooooooooooo#. .#oooooooooooo#. .##############. .##..........##.
    .##..........##. .##..........##. .##..........##. .##..........##.
    .##..........##. .##..........##. ................ ................""",
    "rock": """
    ................ .....######..... ...##++++++##... ..#++++oooo++#..
    .#++++oooooo++#. .#+++oooooooo+#. #++oooooooooooo# #+oooooooooooo+#
    #+ooooooooooooo# #oooooooooooooo# #oooooooooooooo# .#oooooooooooo#.
    .##oooooooooo##. ...##########... ................ ................""",
    "ball": """
    ................ ......####...... ....##oooo##.... ...#oooooooo#...
    ..#oooooooooo#.. ..#oooo##oooo#.. .#ooo#....#ooo#. .######..######.
    .#...#....#...#. ..#....##....#.. ..#..........#.. ...#........#...
    ....##....##.... ......####...... ................ ................""",
    "water": """
    ++++++++++++++++ ++oo++++++oo++++ +o++o++++o++o+++ ++++++++++++++++
    ++++++++++++++++ ++++++oo++++++oo ++++o++o++++o++o ++++++++++++++++
    ++++++++++++++++ ++oo++++++oo++++ +o++o++++o++o+++ ++++++++++++++++
    ++++++++++++++++ ++++++oo++++++oo ++++o++o++++o++o ++++++++++++++++""",
}

# The battle picture, 32x32: one monster serves every species.
MONSTER_ART = """
................................ ...........######............... .........##oooooo##.............
........#oooooooooo#............ .......#oooooooooooo#........... ......#oo##oooooo##oo#..........
......#o#..#oooo#..#o#.......... .....#oo#.##oooo#.##oo#......... .....#ooo####oooo####o#.........
.....#oooooooooooooooo#......... .....#ooo#oooooooo#ooo#......... ......#ooo########ooo#..........
.......#oooo++++oooo#........... ........##oooooooo##............ ......##+#oooooooooo#+##........
.....#++++#oooooooooo#++++#..... ....#++++#oooooooooooo#++++#.... ....#+++#oooooooooooooo#+++#....
.....###oooooooooooooooo###..... ........#oooooooooooooo#........ ........#oooo++++++oooo#........
........#ooo++++++++ooo#........ ........#ooo++++++++ooo#........ .........#oo++++++++oo#.........
..........#oooooooooo#.......... .........#oo##....##oo#......... ........#ooo#......#ooo#........
.......#oooo#........#oooo#..... .......##########..##########... ................................
................................ ................................
"""
GROUND_ART = "######## oooooooo ........ ........ ........ ........ ........ ........"


# =============================================================================================
# Game constants: Pokemon Red's RAM addresses (as pret/pokered's ram/wram.asm names them), our own work variables,
# and the tuning that makes the badge reachable for a plan but not for random button presses.
# =============================================================================================

RAM = {
    # Hardware registers.
    "rP1": 0xFF00, "rIF": 0xFF0F, "rLCDC": 0xFF40, "rSCY": 0xFF42, "rSCX": 0xFF43, "rLY": 0xFF44,
    "rBGP": 0xFF47, "rOBP0": 0xFF48, "rOBP1": 0xFF49, "rWY": 0xFF4A, "rWX": 0xFF4B, "rIE": 0xFFFF,
    # Pokemon Red's addresses, with the same meaning. The predicate's other bytes (wStatusFlags5
    # D730, wMovementFlags D736, CD38, CC57) are never written: they stay 0 from the RAM clear.
    "hWY": 0xFFB0, "hJoyPressed": 0xFFB3, "hJoyHeld": 0xFFB4, "hFrameCounter": 0xFFD5,
    "wOAMBuffer": 0xC300, "wTileMap": 0xC3A0, "wFacing": 0xC109,
    "wCurrentMenuItem": 0xCC26, "wMaxMenuItem": 0xCC28, "wMenuWatchedKeys": 0xCC29,
    "wJoyIgnore": 0xCD6B, "wFontLoaded": 0xCFC4, "wWalkCounter": 0xCFC5,
    "wIsInBattle": 0xD057, "wCurOpponent": 0xD059, "wPlayerName": 0xD158,
    "wPartyCount": 0xD163, "wPartySpecies": 0xD164, "wPartyMon1": 0xD16B, "wPartyMon1HP": 0xD16C,
    "wPartyMon1Level": 0xD18C, "wPartyMon1MaxHP": 0xD18D, "wPartyMon2": 0xD197, "wPartyMon2HP": 0xD198,
    "wPartyMon2MaxHP": 0xD1B9,
    "wPokedexOwned": 0xD2F7, "wPokedexSeen": 0xD30A, "wRivalName": 0xD34A,
    "wObtainedBadges": 0xD356, "wCurMap": 0xD35E, "wYCoord": 0xD361, "wXCoord": 0xD362,
    "wLastMap": 0xD365, "wCurMapHeight": 0xD368, "wCurMapWidth": 0xD369,
    "wTownVisitedFlag": 0xD70B, "wEventFlags": 0xD747,
    # Our own: the VBlank handshake and the joypad latch in HRAM, the rest in WRAM $C200-.
    "hVBlankFlag": 0xFF91, "hJoyLatch": 0xFF92,
    "wPixelX": 0xC200, "wPixelY": 0xC201, "wMapW": 0xC202, "wMapH": 0xC203,
    "wMapCells": 0xC204, "wMapWarps": 0xC206, "wMapTalks": 0xC208, "wRNG": 0xC20A,
    "wEnemyHP": 0xC20C, "wEnemyDamage": 0xC20D, "wEnemyLevel": 0xC20E, "wEnemyName": 0xC20F,
    "wEnemyDex": 0xC211, "wMenuRow": 0xC212, "wMenuCol": 0xC213, "wFighterOffset": 0xC214,
}

LCDC_ON = 0b11110011  # LCD on, window at $9C00 and on, tiles at $8000, BG at $9800, 8x8 sprites on
PAD = {"A": 0, "B": 1, "SELECT": 2, "START": 3, "RIGHT": 4, "LEFT": 5, "UP": 6, "DOWN": 7}

MAP_IDS = {"PALLET_TOWN": 0x00, "ROUTE_1": 0x0C, "REDS_HOUSE_1F": 0x25, "REDS_HOUSE_2F": 0x26,
           "OAKS_LAB": 0x28, "PEWTER_GYM": 0x36}
START_MAP, START_X, START_Y = "REDS_HOUSE_2F", 3, 6

STARTER = {"id": 0xB0, "dex": 4, "name": "CHARMANDER", "level": 5, "hp": 20}  # waits in Oak's lab
# StarterDex (pokered engine/events/starter_dex.asm) marks these owned while the ball's Pokedex page
# is up: Bulbasaur, Ivysaur, Charmander, Squirtle, all in wPokedexOwned's first byte ($4B).
STARTER_DEX_OWNED = sum(1 << (dex - 1) for dex in (1, 2, 4, 7))
HP_PER_LEVEL = 2  # max HP and HP rise together on a level-up
MAX_LEVEL = 100  # keeps max HP below 256: only the low byte of the big-endian HP is used
# Wild species (internal id, Pokedex number, hits to faint, damage per counter-attack, level).
WILD = [("PIDGEY", 0x24, 16, 3, 3, 3), ("RATTATA", 0xA5, 19, 3, 3, 3),
        ("SPEAROW", 0x05, 21, 3, 4, 4), ("CATERPIE", 0x7B, 10, 3, 2, 3)]
# The gym leader's battle: wCurOpponent is the trainer id (200 + trainer class), like the real game.
LEADER = ("ONIX", 0xC8 + 0x22, 95, 8, 4, 12)
# The rival's first battle, in Oak's lab (OPP_RIVAL1 = 200 + RIVAL1): won with A alone, lost by
# pressing B (a move that does no damage) four times; lost, it is no blackout.
RIVAL_MON = ("SQUIRTLE", 0xC8 + 0x19, 7, 3, 5, 5)
ENCOUNTER_RATE = 64  # out of 256 per step in grass
BADGE_LEVEL = 15  # the leader battles only at or above this level (random agents reach about 5-10)
RNG_SEED = 0x2A5B  # reset at NEW GAME, so the route after the intro does not depend on its timing

# Event flags: event i is bit i%8 of wEventFlags + i//8. As in the real game they mark progress
# (a trainer met past the grass, the leader beaten), not chatting to MOM or reading signs.
# The museum ticket is a flag that is not progress, as in the real game: set by the ticket seller by
# the gym's door, reset every frame on Route 1, which stands in for Pewter City (pokered
# scripts/PewterCity.asm resets EVENT_BOUGHT_MUSEUM_TICKET every frame).
EVENTS = {"ROUTE_YOUNGSTER": 32, "GOT_STARTER": 34, "BATTLED_RIVAL_IN_OAKS_LAB": 35, "BOUGHT_MUSEUM_TICKET": 0x68,
          "BEAT_BROCK": 119}
# Talks that run a script instead of, or after, their text: the leader, the starter's ball, and the
# youngster, who gives a second CHARMANDER (the start menu's POKEMON switches the two).
SCRIPTS = {"LEADER": 1, "BALL": 2, "TxtYoungster": 3}

# =============================================================================================
# Maps: one character per step. Every map fits on the screen (at most 10x9 steps), so a map is
# drawn once, with the LCD off, when it loads. Warps: (x, y) -> (map, x, y). Talks: (x, y) ->
# (event or None, text label): None shows the text and sets no flag; the leader's talk runs the
# gym script instead.
# =============================================================================================

SOLID, GRASS, WARP, HEAL, TALK, EDGE = 1, 2, 4, 8, 16, 32
CELLS = [  # (character, block art, flags); the index is the cell type stored in the map data
    (".", "floor", 0), ("#", "wall", SOLID), (",", "path", 0), ("T", "tree", SOLID),
    ('"', "grass", GRASS), ("D", "door", WARP), ("S", "stairs", WARP), ("E", "path", WARP | EDGE),
    ("H", "bed", HEAL), ("s", "sign", SOLID | TALK), ("N", "npc", SOLID | TALK),
    ("L", "leader", SOLID | TALK), ("R", "roof", SOLID), ("B", "housewall", SOLID),
    ("P", "pc", SOLID | TALK), ("t", "table", SOLID), ("o", "rock", SOLID),
    ("~", "water", SOLID), ("b", "ball", SOLID | TALK),
]
CELL_TYPE = {ch: i for i, (ch, _, _) in enumerate(CELLS)}

MAPS = {
    "REDS_HOUSE_2F": {
        "outdoor": False,
        "rows": ["########",
                 "#P....S#",
                 "#......#",
                 "#...tt.#",
                 "#......#",
                 "#......#",
                 "#H.....#",
                 "########"],
        "warps": {(6, 1): ("REDS_HOUSE_1F", 6, 2)},
        "talks": {(1, 1): (None, "TxtBedroomPC")},
    },
    "REDS_HOUSE_1F": {  # downstairs: the stairs top right, the front door far away, bottom left
        "outdoor": False,
        "rows": ["########",
                 "#.....S#",
                 "#......#",
                 "#..tt..#",
                 "#..tt.N#",
                 "#......#",
                 "#......#",
                 "##D#####"],
        "warps": {(6, 1): ("REDS_HOUSE_2F", 6, 2), (2, 7): ("PALLET_TOWN", 3, 4)},
        "talks": {(6, 4): (None, "TxtMom")},
    },
    "PALLET_TOWN": {
        "outdoor": True,
        "rows": ["TTTTEETTTT",
                 "T,,,,,,,,T",
                 "T,RR,,RRRT",
                 "T,BD,,BDBT",
                 "T,,,,,,,,T",
                 "T,,,,,s,,T",
                 "T,,,,,,,,T",
                 "TTTT~~TTTT"],
        "warps": {(4, 0): ("ROUTE_1", 2, 6), (5, 0): ("ROUTE_1", 3, 6),
                  (3, 3): ("REDS_HOUSE_1F", 2, 6), (7, 3): ("OAKS_LAB", 3, 4)},
        "talks": {(6, 5): (None, "TxtTownSign")},
    },
    "ROUTE_1": {  # the youngster stands above the grass: meeting him means crossing it
        "outdoor": True,
        "rows": ["TRRRRT",
                 "TBDBBT",
                 "T,,,NT",
                 'T""""T',
                 'T""""T',
                 "T,,,,T",
                 "T,,,,T",
                 "TTEETT"],
        "warps": {(2, 1): ("PEWTER_GYM", 3, 4), (2, 7): ("PALLET_TOWN", 4, 1),
                  (3, 7): ("PALLET_TOWN", 5, 1)},
        "talks": {(4, 2): ("ROUTE_YOUNGSTER", "TxtYoungster")},
    },
    "OAKS_LAB": {  # the starter's ball, the rival beside it
        "outdoor": False,
        "rows": ["########",
                 "#......#",
                 "#..bN..#",
                 "#......#",
                 "#......#",
                 "###DD###"],
        "warps": {(3, 5): ("PALLET_TOWN", 7, 4), (4, 5): ("PALLET_TOWN", 7, 4)},
        "talks": {(3, 2): (None, "BALL"), (4, 2): (None, "TxtRival")},
    },
    "PEWTER_GYM": {  # the leader, and a museum ticket seller by the door
        "outdoor": False,
        "rows": ["########",
                 "#o.L..o#",
                 "#......#",
                 "#.o..o.#",
                 "#N.....#",
                 "###DD###"],
        "warps": {(3, 5): ("ROUTE_1", 2, 2), (4, 5): ("ROUTE_1", 2, 2)},
        "talks": {(3, 1): (None, "LEADER"), (1, 4): ("BOUGHT_MUSEUM_TICKET", "TxtTicket")},
    },
}

# =============================================================================================
# Text. At most 18 characters a line; '\n' starts the second line, '\f' waits and starts a new box.
# =============================================================================================

TEXTS = {
    "TxtTitle": "STAND-IN", "TxtTitleSub": "A TEST CARTRIDGE", "TxtPressStart": "PRESS START",
    "TxtNewGame": "NEW GAME", "TxtOption": "OPTION",
    "TxtNoOptions": "THERE ARE NO\nOPTIONS TO SET.",
    "TxtIntro1": "WELCOME! THIS IS A\nSTAND-IN WORLD.\fIT ONLY LOOKS LIKE\nTHE REAL GAME.\f"
                 "FIRST, WHAT IS\nYOUR NAME?",
    "TxtIntro2": "SO YOU ARE\n<PLAYER>!\fNOW, WHO IS\nYOUR RIVAL?",
    "TxtIntro3": "<RIVAL> IT IS!\fGET A POKEMON IN\nTHE LAB, GROW IN\f"
                 "THE GRASS, THEN\nWIN THE GYM BADGE!",
    "TxtName": "NAME", "TxtNewName": "NEW NAME",
    "TxtRed": "RED", "TxtAsh": "ASH", "TxtJack": "JACK", "TxtDefaultPlayer": "PLAYER",
    "TxtBlue": "BLUE", "TxtGary": "GARY", "TxtJohn": "JOHN", "TxtDefaultRival": "RIVAL",
    "TxtMenuPokemon": "POKEMON", "TxtMenuItem": "ITEM", "TxtMenuSave": "SAVE",
    "TxtMenuOption": "OPTION", "TxtMenuExit": "EXIT",
    "TxtMom": "MOM: THE GRASS UP\nNORTH IS WILD!\fREST IN YOUR BED\nWHEN YOU ARE HURT.",
    "TxtBedroomPC": "A STAND-IN PC.\nNOTHING IS STORED.",
    "TxtTownSign": "GYM: NORTH, PAST\nTHE TALL GRASS.",
    "TxtYoungster": "WIN FIGHTS IN THE\nGRASS TO GROW!\fTHE LEADER ONLY\nFIGHTS THE STRONG.\f"
                    "TAKE MY POKEMON!",
    "TxtHealed": "YOU RESTED. YOUR\nPOKEMON IS HEALED.",
    "TxtStarterDex": "POKEDEX PAGE:\nCHARMANDER, FIRE.", "TxtGotStarter": "<PLAYER> GOT\nCHARMANDER!",
    "TxtBallEmpty": "THE BALL IS EMPTY.", "TxtRival": "<RIVAL>: PICK ONE,\nTHEN WE FIGHT!",
    "TxtRivalChallenge": "<RIVAL>: I TAKE\nTHIS ONE! FIGHT!",
    "TxtBeatRival": "<RIVAL>: NOT BAD!\nLEVEL UP! LV<LV>",
    "TxtLostToRival": "<RIVAL> WON THIS\nTIME.", "TxtLabHealed": "YOUR POKEMON IS\nHEALED. GO NORTH!",
    "TxtTicket": "A MUSEUM TICKET?\nHERE YOU GO!", "TxtNoEffect": "NO DAMAGE. FOE HIT",
    "TxtNextMon": "FAINTED! NEXT ONE!", "TxtSwitched": "THE TWO SWITCHED\nPLACES.",
    "TxtOakWait": "OAK: WAIT! GET A\nPOKEMON IN MY LAB!",
    "TxtLeaderTooWeak": f"LEADER: TOO WEAK!\nCOME BACK AT LV{BADGE_LEVEL}.",
    "TxtLeaderChallenge": "LEADER: SHOW ME\nYOUR STRENGTH!",
    "TxtLeaderAfter": "LEADER: THE BADGE\nIS ALREADY YOURS.",
    "TxtPlayerMon": STARTER["name"],
    "TxtLV": "LV", "TxtHP": "HP", "TxtSlash": "/",
    "TxtFightRun": "A FIGHT   B RUN", "TxtFight": "A FIGHT",
    "TxtAppeared": "<FOE> APPEARED!", "TxtExchange": "HIT! FOE HIT BACK.",
    "TxtFoeFainted": "<FOE> FAINTED!\nLEVEL UP! LV<LV>",
    "TxtBadge": "YOU WON THE\nBOULDER BADGE!", "TxtGotAway": "GOT AWAY SAFELY!",
    "TxtBlackedOut": "YOU BLACKED OUT!",
}
TEXTS.update({f"TxtFoe{name}": name for name, *_ in WILD + [LEADER, RIVAL_MON]})


# =============================================================================================
# Data laid out in Python: the VRAM tile image, the map tables and the strings.
# =============================================================================================

def build_tiles() -> tuple[bytes, dict]:
    """The whole 4 KiB tile area at $8000, and the tile numbers the program needs."""
    vram = bytearray(0x1000)
    numbers = {}

    def put(index, data):
        vram[16 * index:16 * index + 16] = data

    for k, facing in enumerate(("down", "up", "left")):  # player sprite tiles $01-$0C
        for i, data in enumerate(split_tiles(PLAYER_ART[facing])):
            put(1 + 4 * k + i, data)
    next_free, seen = 0x10, {}

    def place(data):
        nonlocal next_free
        if data not in seen:
            seen[data] = next_free
            put(next_free, data)
            next_free += 1
        return seen[data]

    numbers["blocks"] = {name: [place(t) for t in split_tiles(art)] for name, art in BLOCK_ART.items()}
    numbers["void"] = place(tile_bytes(["########"] * 8))
    numbers["ground"] = place(tile_bytes(GROUND_ART.split()))
    monster = split_tiles(MONSTER_ART)
    numbers["monster"] = next_free
    for data in monster:  # kept consecutive even where tiles repeat: the picture is drawn in order
        put(next_free, data)
        next_free += 1
    assert next_free <= BOX["top_left"], "map tiles ran into the font"
    for ch, code in CHARS.items():
        put(code, glyph(FONT[ch]))
    put(CURSOR, glyph(CURSOR_GLYPH))
    put(PROMPT_ARROW, glyph(ARROW_GLYPH))
    sides = {"top_left": (0, 1, 0, 1), "horizontal": (0, 0, 1, 1), "top_right": (0, 1, 1, 0),
             "vertical": (1, 1, 0, 0), "bottom_left": (1, 0, 0, 1), "bottom_right": (1, 0, 1, 0)}
    for name, code in BOX.items():
        put(code, box_tile(*map(bool, sides[name])))
    return bytes(vram), numbers


def event_address(event: str) -> tuple[int, int]:
    index = EVENTS[event]
    return RAM["wEventFlags"] + index // 8, 1 << (index % 8)


def build_data(tiles: dict) -> str:
    """Assembly for the tables: blocks, cell flags, maps, opponents and strings."""
    lines = ["BlockTiles:"]
    for _, art, _ in CELLS:  # four tile numbers per cell type: top-left, top-right, bottom-left, bottom-right
        lines.append("    db " + ", ".join(f"${t:02X}" for t in tiles["blocks"][art]))
    lines.append("CellFlags:")
    lines.append("    db " + ", ".join(str(flags) for _, _, flags in CELLS))
    lines.append("MapHeaders:  ; id, width, height, cells, warps, talks")
    for name, m in MAPS.items():
        width, height = len(m["rows"][0]), len(m["rows"])
        assert width <= 10 and height <= 9 and width % 2 == 0 and height % 2 == 0, name
        lines.append(f"    db ${MAP_IDS[name]:02X}, {width}, {height}")
        lines.append(f"    dw Cells_{name}, Warps_{name}, Talks_{name}")
    for name, m in MAPS.items():
        rows = m["rows"]
        assert all(len(r) == len(rows[0]) for r in rows), name
        lines.append(f"Cells_{name}:")
        for row in rows:
            lines.append("    db " + ", ".join(str(CELL_TYPE[ch]) for ch in row))
        lines.append(f"Warps_{name}:  ; x, y, map, x, y, flags: bit 0 sets wLastMap, bit 1 a map edge")
        warp_cells = {(x, y) for y, r in enumerate(rows) for x, ch in enumerate(r)
                      if CELLS[CELL_TYPE[ch]][2] & WARP}
        assert warp_cells == set(m["warps"]), f"{name}: every warp cell needs exactly one warp"
        for (x, y), (dest, dx, dy) in m["warps"].items():
            target = MAPS[dest]["rows"][dy][dx]
            assert not CELLS[CELL_TYPE[target]][2] & (SOLID | WARP), f"{name} warp lands on {target!r}"
            sets_last = int(m["outdoor"] and not MAPS[dest]["outdoor"])
            edge = int(rows[y][x] == "E")  # the real game's map connection, not a warp
            lines.append(f"    db {x}, {y}, ${MAP_IDS[dest]:02X}, {dx}, {dy}, {sets_last | edge << 1}")
        lines.append(f"Talks_{name}:  ; x, y, event byte, event mask, text, script (SCRIPTS)")
        talk_cells = {(x, y) for y, r in enumerate(rows) for x, ch in enumerate(r)
                      if CELLS[CELL_TYPE[ch]][2] & TALK}
        assert talk_cells == set(m["talks"]), f"{name}: every talk cell needs exactly one talk"
        for (x, y), (event, label) in m["talks"].items():
            byte, mask = event_address(event) if event else (RAM["wEventFlags"], 0)  # mask 0: no flag
            text_label = label if label.startswith("Txt") else 0
            lines.append(f"    db {x}, {y}\n    dw ${byte:04X}\n    db ${mask:02X}\n    dw {text_label}\n"
                         f"    db {SCRIPTS.get(label, 0)}")
    lines.append("Opponents:  ; id, Pokedex bit, hits to faint, damage, level, name")
    for name, internal, dex, hits, damage, level in WILD + [LEADER, RIVAL_MON]:
        lines.append(f"    db ${internal:02X}, {dex - 1}, {hits}, {damage}, {level}\n    dw TxtFoe{name}")
    for label, message in TEXTS.items():
        lines.append(f"{label}:\n    db " + ", ".join(f"${b:02X}" for b in text(message)))
    return "\n".join(lines)


# =============================================================================================
# The program
# =============================================================================================

PROGRAM = r"""
; ---- Interrupt vector and entry point ---------------------------------------------------------
    org $0040
    jp VBlank                   ; the only interrupt in use
    org $0100
    nop
    jp Start
    org $0150                   ; $0104-$014F: the header, filled in by the build script

; ---- Power-on: clear memory, load the tiles, then run the intro -------------------------------
Start:
    di
    ld sp, $E000
.waitVBlank:                    ; the LCD may only be switched off during VBlank
    ldh a, [rLY]
    cp 144
    jr c, .waitVBlank
    xor a
    ldh [rLCDC], a
    ld hl, $C000                ; work RAM, inline: the stack lives there
    ld bc, $2000
.clearWRAM:
    xor a
    ld [hl+], a
    dec bc
    ld a, b
    or c
    jr nz, .clearWRAM
    ld hl, $8000
    ld bc, $2000
    xor a
    call FillMem
    ld hl, $FE00
    ld bc, $A0
    xor a
    call FillMem
    ld hl, $FF80
    ld bc, $7F
    xor a
    call FillMem
    ld hl, TileData
    ld de, $8000
    ld bc, $1000
    call CopyMem
    ld a, %11100100
    ldh [rBGP], a
    ldh [rOBP0], a
    ldh [rOBP1], a
    xor a
    ldh [rSCX], a
    ldh [rSCY], a
    ldh [rWY], a
    ld a, 7
    ldh [rWX], a
    ld a, 1                     ; VBlank interrupt only
    ldh [rIE], a
    xor a
    ldh [rIF], a
    ld a, LCDC_ON
    ldh [rLCDC], a
    ei
    jp TitleScreen

; ---- VBlank: window position, player sprite, joypad -------------------------------------------
; The joypad is read here once a frame. hJoyPressed holds this frame's new presses; hJoyLatch
; collects them until the game reads it, so a press made while the game is busy (mid-step,
; redrawing) is acted on afterwards instead of being lost.
VBlank:
    push af
    push bc
    push de
    push hl
    ldh a, [hWY]
    ldh [rWY], a
    ld hl, wOAMBuffer
    ld de, $FE00
    ld b, 16
    and a                       ; a window covers the screen: hide the player
    jr nz, .oam
    ld hl, HiddenOAM
.oam:
    ld a, [hl+]
    ld [de], a
    inc e
    dec b
    jr nz, .oam
    ld a, $20                   ; directions: high nibble Down, Up, Left, Right
    ldh [rP1], a
    ldh a, [rP1]
    ldh a, [rP1]
    cpl
    and $0F
    swap a
    ld b, a
    ld a, $10                   ; buttons: low nibble Start, Select, B, A
    ldh [rP1], a
    ldh a, [rP1]
    ldh a, [rP1]
    ldh a, [rP1]
    ldh a, [rP1]
    cpl
    and $0F
    or b
    ld b, a
    ld a, $30
    ldh [rP1], a
    ldh a, [hJoyHeld]
    cpl
    and b
    ldh [hJoyPressed], a
    ld c, a
    ldh a, [hJoyLatch]
    or c
    ldh [hJoyLatch], a
    ld a, b
    ldh [hJoyHeld], a
    ldh a, [hFrameCounter]
    inc a
    ldh [hFrameCounter], a
    ld a, 1
    ldh [hVBlankFlag], a
    pop hl
    pop de
    pop bc
    pop af
    reti

HiddenOAM:
    ds 16

; ---- Frame and memory helpers -----------------------------------------------------------------
WaitFrame:                      ; sleep in halt until the next VBlank has been handled
    xor a
    ldh [hVBlankFlag], a
.wait:
    halt
    ldh a, [hVBlankFlag]
    and a
    jr z, .wait
    ret

DelayFrames:                    ; c frames (keeps b)
    call WaitFrame
    dec c
    jr nz, DelayFrames
    ret

ReadLatch:                      ; a = buttons newly pressed since the last call
    di
    ldh a, [hJoyLatch]
    ld b, a
    xor a
    ldh [hJoyLatch], a
    ei
    ld a, b
    ret

FillMem:                        ; bc bytes of a at hl
    ld d, a
.loop:
    ld a, d
    ld [hl+], a
    dec bc
    ld a, b
    or c
    jr nz, .loop
    ret

CopyMem:                        ; bc bytes from hl to de
    ld a, [hl+]
    ld [de], a
    inc de
    dec bc
    ld a, b
    or c
    jr nz, CopyMem
    ret

Random:                         ; a = next byte: wRNG = 5 * wRNG + $3619 (mod 65536), high byte
    ld a, [wRNG]
    ld h, a
    ld a, [wRNG+1]
    ld l, a
    ld d, h
    ld e, l
    add hl, hl
    add hl, hl
    add hl, de
    ld de, $3619
    add hl, de
    ld a, h
    ld [wRNG], a
    ld a, l
    ld [wRNG+1], a
    ld a, h
    ret

; ---- The screen shadow: wTileMap (20x18 tiles at $C3A0) ---------------------------------------
; Intro screens, text, menus and battles are drawn into wTileMap and copied to the window's
; tile map at $9C00, three rows per VBlank (VRAM is locked while the LCD draws); the window then
; covers the screen with hWY = 0. The overworld map is drawn to $9800 with the LCD off.
TileAddr:                       ; hl = wTileMap + 20 * b + c (keeps bc, de)
    push de
    ld hl, wTileMap
    ld de, 20
    jr RowColumnAddr
WindowAddr:                     ; hl = $9C00 + 32 * b + c (keeps bc, de)
    push de
    ld hl, $9C00
    ld de, 32
RowColumnAddr:
    ld a, b
    and a
    jr z, .column
.row:
    add hl, de
    dec a
    jr nz, .row
.column:
    ld e, c
    ld d, 0
    add hl, de
    pop de
    ret

ClearTileMap:
    ld hl, wTileMap
    ld bc, 360
    ld a, SPACE
    jp FillMem

RedrawWindow:                   ; copy wTileMap to the window map over six frames
    ld hl, wTileMap
    ld de, $9C00
    ld b, 6
.frame:
    call WaitFrame
    ld c, 3
.row:
    call CopyRow20
    ld a, e                     ; next row of the 32-wide map
    add 12
    ld e, a
    jr nc, .sameBank
    inc d
.sameBank:
    dec c
    jr nz, .row
    dec b
    jr nz, .frame
    ret

CopyRow20:
""" + "    ld a, [hl+]\n    ld [de], a\n    inc e\n" * 20 + r"""    ret

DrawBox:                        ; box at row b, column c; d rows by e columns, borders included
    call TileAddr
    push de
    ld a, BOX_TOP_LEFT
    ld bc, BOX_HORIZONTAL * 256 + BOX_TOP_RIGHT
    call BoxRow
    pop de
    push de
    ld a, d
    sub 2
.middle:
    push af
    ld a, BOX_VERTICAL
    ld bc, SPACE * 256 + BOX_VERTICAL
    call BoxRow
    pop af
    dec a
    jr nz, .middle
    ld a, BOX_BOTTOM_LEFT
    ld bc, BOX_HORIZONTAL * 256 + BOX_BOTTOM_RIGHT
    call BoxRow
    pop de
    ret

BoxRow:                         ; at hl: a, then e-2 times b, then c; hl moves to the next row
    push hl
    ld [hl+], a
    ld a, e
    sub 2
    ld d, a
.fill:
    ld a, b
    ld [hl+], a
    dec d
    jr nz, .fill
    ld [hl], c
    pop hl
    ld a, l
    add 20
    ld l, a
    ret nc
    inc h
    ret

DrawTextBox:                    ; the six bottom rows, like the real game's text box
    ld bc, 12 * 256 + 0
    ld de, 6 * 256 + 20
    jp DrawBox

PrintAt:                        ; string hl at row b, column c
    push hl
    call TileAddr
    ld d, h
    ld e, l
    pop hl
    ; fall through
PrintString:                    ; string hl to de; stops at END, LINE2 or PARAGRAPH (returned in a)
    ld a, [hl+]
    cp END
    ret z
    cp LINE2
    ret z
    cp PARAGRAPH
    ret z
    cp PLAYER
    jr z, .player
    cp RIVAL
    jr z, .rival
    cp FOE
    jr z, .foe
    cp LEVEL
    jr z, .level
    ld [de], a
    inc de
    jr PrintString
.player:
    push hl
    ld hl, wPlayerName
    jr .name
.rival:
    push hl
    ld hl, wRivalName
    jr .name
.foe:
    push hl
    ld a, [wEnemyName]
    ld l, a
    ld a, [wEnemyName+1]
    ld h, a
.name:
    call PrintString
    pop hl
    jr PrintString
.level:
    push hl
    ld hl, wPartyMon1Level
    call FighterByte
    ld h, d
    ld l, e
    call PrintNum3
    ld d, h
    ld e, l
    pop hl
    jr PrintString

PrintNum3:                      ; a (0-255) as three characters at hl, leading zeros blank
    ld d, 0
    ld b, 100
    call .digit
    ld b, 10
    call .digit
    add $F6                     ; '0'
    ld [hl+], a
    ret
.digit:
    ld c, 0
.count:
    cp b
    jr c, .put
    sub b
    inc c
    jr .count
.put:
    ld e, a
    ld a, c
    or d
    jr z, .blank
    ld d, 1
    ld a, c
    add $F6
    jr .store
.blank:
    ld a, SPACE
.store:
    ld [hl+], a
    ld a, e
    ret

; ---- Text boxes: wFontLoaded bit 0 set and hWY = 0 while one is open ---------------------------
ShowText:                       ; show text hl, waiting for A or B at each prompt
    ld a, [wFontLoaded]
    set 0, a
    ld [wFontLoaded], a
.page:
    push hl
    call DrawTextBox
    pop hl
    ld de, TEXT_LINE1
.segment:
    call PrintString
    cp LINE2
    jr z, .line2
    cp PARAGRAPH
    jr z, .paragraph
    jp PromptWait
.line2:
    ld de, TEXT_LINE2
    jr .segment
.paragraph:
    push hl
    call PromptWait
    pop hl
    jr .page

PromptWait:                     ; show the arrow at tile (18, 16) and wait for A or B
    ld a, PROMPT_ARROW
    ld [PROMPT_TILE], a
    call RedrawWindow
    xor a
    ldh [hWY], a
.wait:
    call WaitFrame
    call ReadLatch
    and PAD_A | PAD_B
    jr z, .wait
    ld a, SPACE
    ld [PROMPT_TILE], a
    ld [PROMPT_VRAM], a         ; still inside VBlank
    ret

CloseText:                      ; back to the open overworld: no window, wTileMap = the map
    ld a, [wFontLoaded]
    res 0, a
    ld [wFontLoaded], a
    ld a, $90
    ldh [hWY], a
    jp RenderMap

; ---- Menus: cursor in column c, items every second row from row b -----------------------------
; wCurrentMenuItem is the cursor, wMaxMenuItem the last item; returns when a key in
; wMenuWatchedKeys is pressed, with that key in a.
RunMenu:
    ld a, b
    ld [wMenuRow], a
    ld a, c
    ld [wMenuCol], a
    call DrawCursor
    call RedrawWindow
    xor a
    ldh [hWY], a
.loop:
    call WaitFrame
    call ReadLatch
    ld b, a
    ld a, [wMenuWatchedKeys]
    and b
    ret nz
    bit BIT_UP, b
    jr nz, .up
    bit BIT_DOWN, b
    jr z, .loop
    ld a, [wMaxMenuItem]
    ld c, a
    ld a, [wCurrentMenuItem]
    cp c
    jr nc, .loop
    call EraseCursor
    ld hl, wCurrentMenuItem
    inc [hl]
    call DrawCursor
    jr .loop
.up:
    ld a, [wCurrentMenuItem]
    and a
    jr z, .loop
    call EraseCursor
    ld hl, wCurrentMenuItem
    dec [hl]
    call DrawCursor
    jr .loop

DrawCursor:
    ld a, CURSOR
    jr SetCursorTile
EraseCursor:
    ld a, SPACE
SetCursorTile:                  ; tile a at the cursor, in wTileMap and (during VBlank) on screen
    push af
    ld a, [wCurrentMenuItem]
    add a
    ld b, a
    ld a, [wMenuRow]
    add b
    ld b, a
    ld a, [wMenuCol]
    ld c, a
    call TileAddr
    pop af
    ld [hl], a
    push af
    call WindowAddr
    pop af
    ld [hl], a
    ret

; ---- Intro: title, main menu, speech, name lists -----------------------------------------------
; As in the real game, the title leaves wJoyIgnore at 0 and shows no window (hWY non-zero), so the
; "player is in control" predicate already holds here (pokered home/init.asm, engine/movie/title.asm).
TitleScreen:
    ld sp, $E000
    xor a
    ld [wJoyIgnore], a
    ld [wFontLoaded], a
    call ClearTileMap
    ld hl, TxtTitle
    ld bc, 3 * 256 + 6
    call PrintAt
    ld hl, TxtTitleSub
    ld bc, 5 * 256 + 2
    call PrintAt
    ld bc, 7 * 256 + 8
    call DrawPicture
    ld hl, TxtPressStart
    ld bc, 14 * 256 + 4
    call PrintAt
    call ShowTileMapOnBG
.wait:
    call WaitFrame
    call ReadLatch
    and PAD_START | PAD_A
    jr z, .wait

MainMenu:
    call ClearTileMap
    ld bc, 0
    ld de, 7 * 256 + 15
    call DrawBox
    ld hl, TxtNewGame
    ld bc, 2 * 256 + 2
    call PrintAt
    ld hl, TxtOption
    ld bc, 4 * 256 + 2
    call PrintAt
    xor a
    ld [wCurrentMenuItem], a
    inc a
    ld [wMaxMenuItem], a
    ld a, PAD_A | PAD_B | PAD_START
    ld [wMenuWatchedKeys], a
    ld bc, 2 * 256 + 1
    call RunMenu
    bit BIT_B, a
    jp nz, TitleScreen
    ld a, [wCurrentMenuItem]
    and a
    jr z, .newGame
    ld hl, TxtNoOptions
    call ShowText
    jr MainMenu
.newGame:
    ld a, $FF                   ; no overworld control until the bedroom
    ld [wJoyIgnore], a
    call ClearTileMap
    ld hl, TxtIntro1
    call ShowText
    ld hl, PlayerNameList
    ld de, wPlayerName
    call NameList
    call ClearTileMap
    ld hl, TxtIntro2
    call ShowText
    ld hl, RivalNameList
    ld de, wRivalName
    call NameList
    call ClearTileMap
    ld hl, TxtIntro3
    call ShowText
    ld c, 12                    ; fade to white, then the bedroom
    ld a, %10010000
    ldh [rBGP], a
    call DelayFrames
    ld c, 12
    ld a, %01000000
    ldh [rBGP], a
    call DelayFrames
    ld c, 12
    xor a
    ldh [rBGP], a
    call DelayFrames
    call InitNewGame
    jp EnterBedroom

NameList:                       ; list hl (4 item strings, then the NEW NAME default); name to de
    push de
    push hl
    call ClearTileMap
    ld bc, 0
    ld de, 11 * 256 + 11
    call DrawBox
    ld hl, TxtName              ; "NAME" in the top border, tiles (3..6, 0)
    ld de, wTileMap + 3
    call PrintString
    pop hl
    push hl
    ld b, 2
.item:
    ld a, [hl+]
    ld e, a
    ld a, [hl+]
    ld d, a
    push hl
    push bc
    ld h, d
    ld l, e
    ld c, 2
    call PrintAt
    pop bc
    pop hl
    inc b
    inc b
    ld a, b
    cp 10
    jr nz, .item
    xor a
    ld [wCurrentMenuItem], a
    ld a, 3
    ld [wMaxMenuItem], a
    ld a, PAD_A                 ; only A: B does nothing here
    ld [wMenuWatchedKeys], a
    ld bc, 2 * 256 + 1
    call RunMenu
    pop hl
    ld a, [wCurrentMenuItem]
    and a
    jr nz, .pick
    ld a, 4
.pick:
    add a
    ld e, a
    ld d, 0
    add hl, de
    ld a, [hl+]
    ld h, [hl]
    ld l, a
    pop de
.copy:
    ld a, [hl+]
    ld [de], a
    inc de
    cp END
    jr nz, .copy
    ret

PlayerNameList:
    dw TxtNewName, TxtRed, TxtAsh, TxtJack, TxtDefaultPlayer
RivalNameList:
    dw TxtNewName, TxtBlue, TxtGary, TxtJohn, TxtDefaultRival

InitNewGame:                    ; an empty party (the starter waits in Oak's lab), a fixed random seed
    xor a
    ld [wPartyCount], a
    ld [wLastMap], a
    dec a
    ld [wPartySpecies], a
    ld a, RNG_SEED >> 8
    ld [wRNG], a
    ld a, RNG_SEED & $FF
    ld [wRNG+1], a
    ret

; ---- Maps ---------------------------------------------------------------------------------------
EnterBedroom:                   ; new game and blackout: the bedroom, facing down
    xor a
    ld [wFacing], a
    ld a, START_MAP
    ld bc, START_Y * 256 + START_X
    call LoadMap
    xor a
    ld [wJoyIgnore], a
    ldh [hJoyLatch], a          ; presses made during the fade or the blackout are dropped
    jp Overworld

LoadMap:                        ; map a, player at row b, column c; drawn with the LCD off
    push bc
    ld [wCurMap], a
    cp ROUTE_1_ID               ; maps below ROUTE_1 are towns: marked visited as they load
    call c, MarkTownVisited
    ld hl, MapHeaders
.find:
    cp [hl]
    jr z, .found
    ld de, 9
    add hl, de
    jr .find
.found:
    inc hl
    ld a, [hl+]
    ld [wMapW], a
    srl a
    ld [wCurMapWidth], a
    ld a, [hl+]
    ld [wMapH], a
    srl a
    ld [wCurMapHeight], a
    ld de, wMapCells            ; three pointers: cells, warps, talks
    ld b, 6
.pointers:
    ld a, [hl+]
    ld [de], a
    inc de
    dec b
    jr nz, .pointers
    pop bc
    ld a, b
    ld [wYCoord], a
    ld a, c
    ld [wXCoord], a
    xor a
    ld [wWalkCounter], a
    ld a, [wFontLoaded]
    res 0, a
    ld [wFontLoaded], a
    call RenderMap
    ld a, [wXCoord]
    swap a
    ld [wPixelX], a
    ld a, [wYCoord]
    swap a
    ld [wPixelY], a
    call UpdateSprite
ShowTileMapOnBG:                ; wTileMap onto the background with the LCD off; no window (hWY = $90)
    call WaitFrame
    xor a
    ldh [rLCDC], a
    ld hl, wTileMap
    ld de, $9800
    ld b, 18
.row:
    call CopyRow20
    ld a, e
    add 12
    ld e, a
    jr nc, .sameBank
    inc d
.sameBank:
    dec b
    jr nz, .row
    ld a, %11100100
    ldh [rBGP], a
    ldh [rOBP0], a
    ld a, $90
    ldh [hWY], a
    ldh [rWY], a
    ld a, LCDC_ON
    ldh [rLCDC], a
    ret

RenderMap:                      ; the current map's blocks into wTileMap
    ld hl, wTileMap
    ld bc, 360
    ld a, VOID_TILE
    call FillMem
    ld a, [wMapCells]
    ld e, a
    ld a, [wMapCells+1]
    ld d, a
    ld b, 0
.row:
    ld c, 0
.cell:
    ld a, [de]
    inc de
    push de
    push bc
    call DrawBlock
    pop bc
    pop de
    inc c
    ld a, [wMapW]
    cp c
    jr nz, .cell
    inc b
    ld a, [wMapH]
    cp b
    jr nz, .row
    ret

DrawBlock:                      ; cell type a at step (c, b): four tiles
    ld l, a
    ld h, 0
    add hl, hl
    add hl, hl
    ld de, BlockTiles
    add hl, de
    ld d, h
    ld e, l
    sla b
    sla c
    call TileAddr
    ld a, [de]
    inc de
    ld [hl+], a
    ld a, [de]
    inc de
    ld [hl], a
    ld bc, 19
    add hl, bc
    ld a, [de]
    inc de
    ld [hl+], a
    ld a, [de]
    ld [hl], a
    ret

GetCell:                        ; a = cell type at step (c, b) (keeps bc)
    ld a, [wMapCells]
    ld l, a
    ld a, [wMapCells+1]
    ld h, a
    ld a, [wMapW]
    ld e, a
    ld d, 0
    ld a, b
    and a
    jr z, .column
.row:
    add hl, de
    dec a
    jr nz, .row
.column:
    ld e, c
    add hl, de
    ld a, [hl]
    ret

GetCellFlags:                   ; a = flags of cell type a
    ld hl, CellFlags
    ld e, a
    ld d, 0
    add hl, de
    ld a, [hl]
    ret

FacingTarget:                   ; (c, b) = the step the player faces; carry if off the map
    ld a, [wFacing]
    rrca
    ld e, a
    ld d, 0
    ld hl, DirectionDeltas
    add hl, de
    ld a, [wYCoord]
    add [hl]
    ld b, a
    inc hl
    ld a, [wXCoord]
    add [hl]
    ld c, a
    ld a, [wMapH]
    ld d, a
    ld a, b
    cp d
    ccf
    ret c
    ld a, [wMapW]
    ld d, a
    ld a, c
    cp d
    ccf
    ret

DirectionDeltas:                ; dy, dx for facing down, up, left, right ($00, $04, $08, $0C)
    db 1, 0, $FF, 0, 0, $FF, 0, 1

UpdateSprite:                   ; the player's four sprites into the OAM buffer
    ld a, [wFacing]
    add a
    ld e, a
    ld d, 0
    ld hl, PlayerSprites
    add hl, de
    ld de, wOAMBuffer
    ld a, [wPixelY]
    add 16
    ld b, a
    ld a, [wPixelX]
    add 8
    ld c, a
    call .entry
    ld a, c
    add 8
    ld c, a
    call .entry
    ld a, b
    add 8
    ld b, a
    ld a, c
    sub 8
    ld c, a
    call .entry
    ld a, c
    add 8
    ld c, a
.entry:
    ld a, b
    ld [de], a
    inc de
    ld a, c
    ld [de], a
    inc de
    ld a, [hl+]
    ld [de], a
    inc de
    ld a, [hl+]
    ld [de], a
    inc de
    ret

PlayerSprites:                  ; tile, attributes for each quarter; right is left mirrored
    db 1, 0, 2, 0, 3, 0, 4, 0
    db 5, 0, 6, 0, 7, 0, 8, 0
    db 9, 0, 10, 0, 11, 0, 12, 0
    db 10, $20, 9, $20, 12, $20, 11, $20

; ---- The overworld loop -------------------------------------------------------------------------
; One new press starts one step (holding does not keep walking): 8 frames of 2 pixels, with
; wWalkCounter counting down. Coordinates change when the step starts.
Overworld:
    ld sp, $E000
.frame:
    call WaitFrame
    ld a, [wCurMap]             ; Route 1 stands in for Pewter City, whose script resets this flag
    cp ROUTE_1_ID               ; every frame (pokered scripts/PewterCity.asm)
    jr nz, .ticketKept
    ld hl, BOUGHT_MUSEUM_TICKET_BYTE
    res BOUGHT_MUSEUM_TICKET_BIT, [hl]
.ticketKept:
    ld a, [wWalkCounter]
    and a
    jr nz, .walking
    call ReadLatch
    bit BIT_START, a
    jr nz, .menu
    bit BIT_A, a
    jr nz, .talk
    ld c, 0
    bit BIT_DOWN, a
    jr nz, .step
    inc c
    bit BIT_UP, a
    jr nz, .step
    inc c
    bit BIT_LEFT, a
    jr nz, .step
    inc c
    bit BIT_RIGHT, a
    jr z, .frame
.step:
    call TryStep
    jr .frame
.menu:
    call StartMenu
    jr .frame
.talk:
    call Interact
    jr .frame
.walking:
    call WalkFrame
    jr .frame

TryStep:                        ; direction c (0 down, 1 up, 2 left, 3 right): turn, then step
    ld a, c
    add a
    add a
    ld [wFacing], a
    call UpdateSprite
    call FacingTarget
    ret c
    call GetCell
    call GetCellFlags
    bit 0, a                    ; SOLID
    ret nz
    bit 5, a                    ; EDGE: Oak keeps a player with no Pokemon in town, as the real
    jr z, .step                 ; game's Pallet Town script does (pokered scripts/PalletTown.asm)
    ld a, [wPartyCount]
    and a
    jr nz, .step
    ld hl, TxtOakWait
    call ShowText
    jp CloseText
.step:
    ld a, b
    ld [wYCoord], a
    ld a, c
    ld [wXCoord], a
    ld a, 8
    ld [wWalkCounter], a
    ret

WalkFrame:                      ; move the sprite 2 pixels; at the end of the step, check the cell
    ld a, [wFacing]
    rrca
    ld e, a
    ld d, 0
    ld hl, DirectionDeltas
    add hl, de
    ld a, [hl+]
    add a
    ld b, a
    ld a, [wPixelY]
    add b
    ld [wPixelY], a
    ld a, [hl]
    add a
    ld b, a
    ld a, [wPixelX]
    add b
    ld [wPixelX], a
    call UpdateSprite
    ld hl, wWalkCounter
    dec [hl]
    ret nz
    ld a, [wYCoord]
    ld b, a
    ld a, [wXCoord]
    ld c, a
    call GetCell
    call GetCellFlags
    bit 2, a                    ; WARP
    jr nz, Warp
    bit 3, a                    ; HEAL
    jr nz, HealTile
    bit 1, a                    ; GRASS
    ret z
    ld a, [wPartyCount]         ; no wild battles before the starter, as in the real game
    and a
    ret z
    call Random
    cp ENCOUNTER_RATE
    ret nc
    call Random
    and 3
    jp WildBattle

Warp:                           ; the warp entry for step (c, b): x, y, map, x, y, sets wLastMap
    ld a, [wMapWarps]
    ld l, a
    ld a, [wMapWarps+1]
    ld h, a
.find:
    ld a, [hl+]
    cp c
    jr nz, .next
    ld a, [hl]
    cp b
    jr z, .found
.next:
    ld de, 5
    add hl, de
    jr .find
.found:
    inc hl
    ld a, [hl+]
    ld d, a
    ld a, [hl+]
    ld c, a
    ld a, [hl+]
    ld b, a
    ld a, [hl]
    bit 1, a
    jr nz, .load                ; a map edge: the new map and position together, no fade
    bit 0, a
    jr z, .fade
    ld a, [wCurMap]             ; leaving the outdoors: remember where
    ld [wLastMap], a
.fade:                          ; as WarpFound2 then LoadMapData (pokered home/overworld.asm): the
    ld a, d                     ; new wCurMap, 32 frames of fading to black, then the new position
    ld [wCurMap], a
    push bc
    ld hl, FadeToBlack
    ld e, 4
.fadeStep:
    ld a, [hl+]
    ldh [rBGP], a
    ldh [rOBP0], a
    ld c, 8
    call DelayFrames
    dec e
    jr nz, .fadeStep
    pop bc
.load:
    ld a, d
    jp LoadMap

FadeToBlack:                    ; the palettes of GBFadeOutToBlack (pokered home/fade.asm)
    db %11100100, %11111001, %11111110, %11111111

HealTile:                       ; a text only when someone was hurt
    ld a, [wPartyMon1MaxHP+1]
    ld b, a
    ld a, [wPartyMon1HP+1]
    cp b
    jr nz, .heal
    ld a, [wPartyMon2MaxHP+1]
    ld b, a
    ld a, [wPartyMon2HP+1]
    cp b
    ret z
.heal:
    call HealParty
    ld hl, TxtHealed
    call ShowText
    jp CloseText

HealParty:                      ; every member's HP to its max (an empty slot holds 0 and 0)
    ld a, [wPartyMon1MaxHP+1]
    ld [wPartyMon1HP+1], a
    ld a, [wPartyMon2MaxHP+1]
    ld [wPartyMon2HP+1], a
    ret

Interact:                       ; A: read the sign or talk to the person the player faces
    call FacingTarget
    ret c
    call GetCell
    call GetCellFlags
    bit 4, a                    ; TALK
    ret z
    ld a, [wMapTalks]
    ld l, a
    ld a, [wMapTalks+1]
    ld h, a
.find:                          ; entries: x, y, event byte (2), event mask, text (2), leader
    ld a, [hl+]
    cp c
    jr nz, .next
    ld a, [hl]
    cp b
    jr z, .found
.next:
    ld de, 7
    add hl, de
    jr .find
.found:
    inc hl
    ld a, [hl+]
    ld e, a
    ld a, [hl+]
    ld d, a
    ld a, [hl+]
    ld b, a
    ld a, [de]                  ; set the event flag (mask 0: none)
    or b
    ld [de], a
    ld a, [hl+]
    ld e, a
    ld a, [hl+]
    ld d, a
    ld a, [hl]
    dec a
    jr z, GymLeader
    dec a
    jr z, StarterBall
    push af
    ld h, d
    ld l, e
    call ShowText
    pop af
    dec a
    jp nz, CloseText
    ld a, [wPartyCount]         ; the youngster's gift: once, to a party of one
    cp 1
    call z, AddCharmander
    jp CloseText

StarterBall:                    ; Oak's lab: the ball's Pokedex page, the starter, the rival's battle
    ld a, [wPartyCount]
    and a
    ld hl, TxtBallEmpty
    jr nz, .say
    ld a, STARTER_DEX_OWNED     ; StarterDex: owned bits while the page is up, then 0
    ld [wPokedexOwned], a
    ld hl, TxtStarterDex
    call ShowText
    xor a
    ld [wPokedexOwned], a
    call AddCharmander
    ld hl, GOT_STARTER_BYTE     ; as the lab's script, once the starter is in the party (pokered
    set GOT_STARTER_BIT, [hl]   ; scripts/OaksLab.asm)
    ld hl, TxtRivalChallenge
    call ShowText
    call CloseText
    ld a, RIVAL_ENTRY
    call TrainerBattle
    call HealParty              ; won or lost, the lab's script heals the party and marks the
                                ; battle (pokered scripts/OaksLab.asm)
    ld hl, BATTLED_RIVAL_IN_OAKS_LAB_BYTE
    set BATTLED_RIVAL_IN_OAKS_LAB_BIT, [hl]
    ld hl, TxtLabHealed
.say:
    call ShowText
    jp CloseText

GymLeader:
    ld a, [wObtainedBadges]
    bit 0, a
    ld hl, TxtLeaderAfter
    jr nz, .say
    ld a, [wPartyMon1Level]
    cp BADGE_LEVEL
    ld hl, TxtLeaderTooWeak
    jr c, .say
    ld hl, TxtLeaderChallenge
    call ShowText
    call CloseText
    ld a, LEADER_ENTRY
    jp TrainerBattle
.say:
    call ShowText
    jp CloseText

MarkTownVisited:                ; bit a of the 2-byte wTownVisitedFlag, as the real game's map load
    push af                     ; (pokered engine/overworld/missable_objects.asm); keeps a
    ld hl, wTownVisitedFlag
    call SetBit
    pop af
    ret

AddCharmander:                  ; as AddPartyMon (pokered engine/pokemon/add_mon.asm): the count and
    ld hl, wPartyCount          ; species first, the nickname prompt (here a text), then the struct,
    inc [hl]                    ; the Pokedex bits and the stats
    ld e, [hl]
    ld d, 0
    add hl, de
    ld [hl], STARTER_ID
    inc hl
    ld [hl], $FF
    ld hl, TxtGotStarter
    call ShowText
    ld hl, wPartyMon1
    ld a, [wPartyCount]
    dec a
    jr z, .struct
    ld hl, wPartyMon2
.struct:
    ld [hl], STARTER_ID
    push hl
    ld hl, STARTER_DEX_BYTE_OWNED
    set STARTER_DEX_BIT, [hl]
    ld hl, STARTER_DEX_BYTE_SEEN
    set STARTER_DEX_BIT, [hl]
    pop hl
    inc hl
    inc hl
    ld [hl], STARTER_HP         ; HP, low byte
    ld de, MON_LEVEL - 2
    add hl, de
    ld [hl], STARTER_LEVEL
    inc hl
    inc hl
    ld [hl], STARTER_HP         ; max HP, low byte
    ret

StartMenu:                      ; Start: a menu in a box; B, Start, or A on EXIT closes it
    ld a, [wFontLoaded]
    set 0, a
    ld [wFontLoaded], a
    ld bc, 0 * 256 + 10
    ld de, 15 * 256 + 10
    call DrawBox
""" + "".join(f"    ld hl, {label}\n    ld bc, {2 + 2 * i} * 256 + 12\n    call PrintAt\n"
              for i, label in enumerate(["TxtMenuPokemon", "TxtMenuItem", "wPlayerName", "TxtMenuSave",
                                         "TxtMenuOption", "TxtMenuExit"])) + r"""
    xor a
    ld [wCurrentMenuItem], a
    ld a, 5
    ld [wMaxMenuItem], a
    ld a, PAD_A | PAD_B | PAD_START
    ld [wMenuWatchedKeys], a
.run:
    ld bc, 2 * 256 + 11
    call RunMenu
    bit BIT_A, a
    jp z, CloseText
    ld a, [wCurrentMenuItem]
    cp 5
    jp z, CloseText
    and a
    jr nz, .run
    ld a, [wPartyCount]         ; POKEMON, with two: they switch places
    cp 2
    jr nz, .run
    call SwitchParty
    ld hl, TxtSwitched
    call ShowText
    jp CloseText

SwitchParty:                    ; as the party menu's SWITCH (pokered engine/menus/start_sub_menus.asm,
    ld hl, wPartySpecies        ; SwitchPartyMon_InitVarOrSwapData): the species, then the structs
    ld a, [hl+]
    ld b, [hl]
    ld [hl-], a
    ld [hl], b
    ld hl, wPartyMon1
    ld de, wPartyMon2
    ld c, PARTY_MON_SIZE
.swap:
    ld a, [de]
    ld b, [hl]
    ld [hl+], a
    ld a, b
    ld [de], a
    inc de
    dec c
    jr nz, .swap
    ret

; ---- Battles ------------------------------------------------------------------------------------
; A attacks; the foe faints after its number of hits and strikes back after every other one.
; B runs from wild battles. Winning raises the level by one (max HP and HP by HP_PER_LEVEL). The
; first member with HP fights (wFighterOffset: 0 or 44), then the other one if it faints.
WildBattle:                     ; a = entry in Opponents
    ld b, 1
    jr Battle
TrainerBattle:
    ld b, 2
Battle:
    ld c, a                     ; entries are 7 bytes
    add a
    add a
    add a
    sub c
    ld e, a
    ld d, 0
    ld hl, Opponents
    add hl, de
    ld a, b
    ld [wIsInBattle], a
    ld a, [hl+]
    ld [wCurOpponent], a
    ld a, [hl+]
    ld [wEnemyDex], a
    ld a, [hl+]
    ld [wEnemyHP], a
    ld a, [hl+]
    ld [wEnemyDamage], a
    ld a, [hl+]
    ld [wEnemyLevel], a
    ld a, [hl+]
    ld [wEnemyName], a
    ld a, [hl]
    ld [wEnemyName+1], a
    ld hl, wPokedexSeen
    call SetDexBit
    ld a, [wPartyMon1HP+1]      ; the first member with HP fights, as in the real game
    and a
    ld a, 0
    jr nz, .fighter
    ld a, PARTY_MON_SIZE
.fighter:
    ld [wFighterOffset], a
    ld b, 3                     ; flash the screen
.flash:
    ld a, %00011011
    ldh [rBGP], a
    ld c, 4
    call DelayFrames
    ld a, %11100100
    ldh [rBGP], a
    ld c, 4
    call DelayFrames
    dec b
    jr nz, .flash
    call DrawBattleScreen
    call RedrawWindow
    xor a
    ldh [hWY], a
.loop:
    call WaitFrame
    call ReadLatch
    bit BIT_A, a
    jr nz, .attack
    bit BIT_B, a
    jr z, .loop
    ld a, [wIsInBattle]
    cp 1
    jr z, .run
    ld a, [wCurOpponent]
    cp OPP_RIVAL1
    jr nz, .loop                ; no running from the leader
    ld de, TxtNoEffect          ; against the rival, B is a move that does no damage
    jr .foeAttacks
.run:
    ld hl, TxtGotAway
    call ShowText
    jp EndBattle
.attack:
    ld hl, wEnemyHP
    dec [hl]
    jr z, .won
    ld de, TxtExchange
.foeAttacks:                    ; de: the message
    ld hl, wPartyMon1HP+1
    call FighterByte
    ld c, a
    ld a, [wEnemyDamage]
    ld b, a
    ld a, c
    sub b
    jr c, .fainted
    jr z, .fainted
    ld [hl], a
.message:
    ld h, d
    ld l, e
    ld de, TEXT_LINE2
    call PrintString
    call DrawBattleStats
    call RedrawWindow
    jr .loop
.fainted:
    ld [hl], 0
    ld a, [wPartyCount]         ; the other member, if it has HP, fights on
    cp 2
    jr nz, .lost
    ld a, [wFighterOffset]
    xor PARTY_MON_SIZE
    ld [wFighterOffset], a
    ld hl, wPartyMon1HP+1
    call FighterByte
    and a
    ld de, TxtNextMon
    jr nz, .message
.lost:                          ; losing the rival's first battle in the lab is no blackout
    ld a, [wCurOpponent]        ; (pokered engine/battle/core.asm, HandlePlayerBlackOut)
    cp OPP_RIVAL1
    jr nz, Blackout
    ld a, [wCurMap]
    cp OAKS_LAB_ID
    jr nz, Blackout
    call DrawBattleStats
    ld hl, TxtLostToRival
    jr .said
.won:
    call LevelUp
    call DrawBattleStats
    ld a, [wIsInBattle]
    cp 2
    jr z, .trainer
    ld hl, wPokedexOwned
    call SetDexBit
    ld hl, TxtFoeFainted
    jr .said
.trainer:
    ld a, [wCurOpponent]
    cp OPP_RIVAL1
    ld hl, TxtBeatRival
    jr z, .said
    ld hl, wObtainedBadges
    set 0, [hl]
    ld hl, BEAT_BROCK_BYTE
    set 7, [hl]
    ld hl, TxtBadge
.said:
    call ShowText
    jp EndBattle

Blackout:                       ; no HP left: wIsInBattle = $FF for a while, then home with full HP
    ld a, $FF
    ld [wIsInBattle], a
    call DrawBattleStats
    call DrawTextBox
    ld hl, TxtBlackedOut
    ld de, TEXT_LINE1
    call PrintString
    call RedrawWindow
    ld c, 40
    call DelayFrames
    call HealParty
    xor a
    ld [wIsInBattle], a
    ld [wCurOpponent], a
    jp EnterBedroom

EndBattle:
    xor a
    ld [wIsInBattle], a
    ld [wCurOpponent], a
    jp CloseText

LevelUp:                        ; the fighting member's
    ld hl, wPartyMon1Level
    call FighterByte
    cp MAX_LEVEL
    ret nc
    inc [hl]
    inc hl                      ; max HP, low byte
    inc hl
    ld a, [hl]
    add HP_PER_LEVEL
    ld [hl], a
    ld hl, wPartyMon1HP+1
    call FighterByte
    add HP_PER_LEVEL
    ld [hl], a
    ret

FighterByte:                    ; hl: a field of wPartyMon1, moved to the fighting member's; a = [hl]
    ld a, [wFighterOffset]
    add l
    ld l, a
    jr nc, .noCarry
    inc h
.noCarry:
    ld a, [hl]
    ret

SetDexBit:                      ; set bit wEnemyDex of the 19-byte field at hl
    ld a, [wEnemyDex]
SetBit:                         ; set bit a of the bit field at hl
    ld c, a
    srl a
    srl a
    srl a
    ld e, a
    ld d, 0
    add hl, de
    ld a, c
    and 7
    ld b, a
    inc b
    ld a, 1
.shift:
    dec b
    jr z, .set
    add a
    jr .shift
.set:
    or [hl]
    ld [hl], a
    ret

DrawBattleScreen:
    call ClearTileMap
    ld a, [wEnemyName]
    ld l, a
    ld a, [wEnemyName+1]
    ld h, a
    ld bc, 1 * 256 + 1
    call PrintAt
    ld hl, TxtLV
    ld bc, 2 * 256 + 1
    call PrintAt
    ld hl, TxtHP
    ld bc, 3 * 256 + 1
    call PrintAt
    ld bc, 1 * 256 + 13
    call DrawPicture
    ld bc, 5 * 256 + 12
    call DrawGround
    ld bc, 6 * 256 + 2
    call DrawPicture
    ld bc, 10 * 256 + 1
    call DrawGround
    ld hl, TxtPlayerMon
    ld bc, 7 * 256 + 9
    call PrintAt
    ld hl, TxtLV
    ld bc, 8 * 256 + 9
    call PrintAt
    ld hl, TxtHP
    ld bc, 9 * 256 + 9
    call PrintAt
    ld hl, TxtSlash
    ld bc, 9 * 256 + 14
    call PrintAt
    call DrawTextBox
    ld hl, TxtFightRun
    ld a, [wIsInBattle]
    cp 1
    jr z, .wild
    ld hl, TxtFight
.wild:
    ld de, TEXT_LINE1
    call PrintString
    ld hl, TxtAppeared
    ld de, TEXT_LINE2
    call PrintString
DrawBattleStats:                ; the numbers: foe level and hits left, our level and HP
    ld a, [wEnemyLevel]
    ld hl, wTileMap + 20 * 2 + 3
    call PrintNum3
    ld a, [wEnemyHP]
    ld hl, wTileMap + 20 * 3 + 3
    call PrintNum3
    ld hl, wPartyMon1Level
    call FighterByte
    ld hl, wTileMap + 20 * 8 + 11
    call PrintNum3
    ld hl, wPartyMon1HP+1
    call FighterByte
    ld hl, wTileMap + 20 * 9 + 11
    call PrintNum3
    ld hl, wPartyMon1MaxHP+1
    call FighterByte
    ld hl, wTileMap + 20 * 9 + 15
    jp PrintNum3

DrawPicture:                    ; the 4x4-tile monster with its top-left at row b, column c
    call TileAddr
    ld a, MONSTER_TILE
    ld c, 4
.row:
    ld b, 4
.column:
    ld [hl+], a
    inc a
    dec b
    jr nz, .column
    ld de, 16
    add hl, de
    dec c
    jr nz, .row
    ret

DrawGround:                     ; six ground tiles from row b, column c
    call TileAddr
    ld a, GROUND_TILE
    ld b, 6
.loop:
    ld [hl+], a
    dec b
    jr nz, .loop
    ret

; ---- Data ---------------------------------------------------------------------------------------
TileData:
    db TILE_DATA
"""

# =============================================================================================
# Header and build
# =============================================================================================

NINTENDO_LOGO = bytes.fromhex(
    "CEED6666CC0D000B03730083000C000D0008111F8889000EDCCC6EE6DDDDD999"
    "BBBB67636E0EECCCDDDC999FBBB9333E")
TITLE = b"STANDIN"
ROM_SIZE = 0x8000


def symbols(tile_data: bytes, tiles: dict) -> dict:
    table = dict(RAM)
    table.update({f"BIT_{name}": bit for name, bit in PAD.items()})
    table.update({f"PAD_{name}": 1 << bit for name, bit in PAD.items()})
    table.update({f"BOX_{name.upper()}": code for name, code in BOX.items()})
    owned_byte = RAM["wPokedexOwned"] + (STARTER["dex"] - 1) // 8
    seen_byte = RAM["wPokedexSeen"] + (STARTER["dex"] - 1) // 8
    for name in ("BEAT_BROCK", "GOT_STARTER", "BATTLED_RIVAL_IN_OAKS_LAB", "BOUGHT_MUSEUM_TICKET"):
        table[f"{name}_BYTE"] = RAM["wEventFlags"] + EVENTS[name] // 8
        table[f"{name}_BIT"] = EVENTS[name] % 8
    table.update(
        LCDC_ON=LCDC_ON, SPACE=SPACE, CURSOR=CURSOR, PROMPT_ARROW=PROMPT_ARROW,
        END=END, LINE2=LINE2, PARAGRAPH=PARAGRAPH, PLAYER=PLAYER, RIVAL=RIVAL, LEVEL=LEVEL, FOE=FOE,
        TEXT_LINE1=RAM["wTileMap"] + 20 * 14 + 1, TEXT_LINE2=RAM["wTileMap"] + 20 * 16 + 1,
        PROMPT_TILE=RAM["wTileMap"] + 20 * 16 + 18, PROMPT_VRAM=0x9C00 + 32 * 16 + 18,
        VOID_TILE=tiles["void"], GROUND_TILE=tiles["ground"], MONSTER_TILE=tiles["monster"],
        START_MAP=MAP_IDS[START_MAP], START_X=START_X, START_Y=START_Y,
        STARTER_ID=STARTER["id"], STARTER_LEVEL=STARTER["level"], STARTER_HP=STARTER["hp"],
        STARTER_DEX_BYTE_OWNED=owned_byte, STARTER_DEX_BYTE_SEEN=seen_byte,
        STARTER_DEX_BIT=(STARTER["dex"] - 1) % 8, STARTER_DEX_OWNED=STARTER_DEX_OWNED,
        HP_PER_LEVEL=HP_PER_LEVEL, MAX_LEVEL=MAX_LEVEL, ENCOUNTER_RATE=ENCOUNTER_RATE,
        BADGE_LEVEL=BADGE_LEVEL, RNG_SEED=RNG_SEED, OPP_RIVAL1=RIVAL_MON[1],
        LEADER_ENTRY=len(WILD), RIVAL_ENTRY=len(WILD) + 1, ROUTE_1_ID=MAP_IDS["ROUTE_1"],
        OAKS_LAB_ID=MAP_IDS["OAKS_LAB"], PARTY_MON_SIZE=44, MON_LEVEL=0x21,
        TILE_DATA=tile_data,
    )
    return table


def build() -> bytes:
    tile_data, tiles = build_tiles()
    source = PROGRAM + build_data(tiles)
    image, _ = assemble(source, symbols(tile_data, tiles), ROM_SIZE)
    rom = bytearray(image)
    rom[0x104:0x134] = NINTENDO_LOGO
    rom[0x134:0x144] = TITLE.ljust(16, b"\0")  # $0143 = 0: a plain Game Boy cartridge
    rom[0x144:0x146] = b"00"  # new licensee code: none
    rom[0x146] = 0x00  # no Super Game Boy functions
    rom[0x147] = 0x00  # cartridge type: ROM only
    rom[0x148] = 0x00  # 32 KiB
    rom[0x149] = 0x00  # no cartridge RAM
    rom[0x14A] = 0x01  # destination: overseas
    rom[0x14B] = 0x00
    rom[0x14C] = 0x00  # version
    check = 0
    for byte in rom[0x134:0x14D]:
        check = (check - byte - 1) & 0xFF
    rom[0x14D] = check
    total = (sum(rom) - rom[0x14E] - rom[0x14F]) & 0xFFFF
    rom[0x14E:0x150] = bytes([total >> 8, total & 0xFF])
    return bytes(rom)


def main() -> None:
    out = Path(__file__).resolve().parent / "standin.gb"
    rom = build()
    out.write_bytes(rom)
    used = len(rom.rstrip(b"\0"))
    print(f"wrote {out}: {len(rom)} bytes, {used} in use", file=sys.stderr)


if __name__ == "__main__":
    main()
