#!/usr/bin/env python3
"""The paper's alignment as its public code does it (ivanniu/On-Policy-Distill,
`TeacherClient._align_chunks`, see ../shared/research/method-and-baselines.md): two pointers
grow a chunk, decoding both token spans with the tokenizers (special tokens kept) and comparing
the NFC-normalised strings until they are equal and do not end in U+FFFD. Timed on the same
response texts and tokenizers as `cargo bench --bench align -- --json` (real Qwen3 student ids
vs Llama 3 teacher ids), excluding tokenization on both sides. Prints one JSON line.

  python benches/python/dpca_ref.py QWEN3_TOKENIZER_DIR LLAMA3_TOKENIZER_DIR
"""
import json
import statistics
import sys
import time
import unicodedata

from tokenizers import Tokenizer

K = 6


def response(seed):
    # The same generator as benches/align.rs (SplitMix64 of tokbridge::data::Rng).
    state = seed
    mask = (1 << 64) - 1

    def next_u64():
        nonlocal state
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    out = ""
    while len(out) < 1900:
        a, b = next_u64() % 100_000, next_u64() % 10_000
        out += f"Tom has {a} apples and buys {b} more, so he has {a} + {b} = {a + b} apples. "
    return out + "\n#### 42"


def align(S, T, dec_s, dec_t):
    n, m = len(S), len(T)
    s = t = 0
    chunks = 0
    while s < n and t < m:
        se, te, matched = s + 1, t + 1, False
        while se <= n and te <= m:
            a = unicodedata.normalize("NFC", dec_s(S[s:se]))
            b = unicodedata.normalize("NFC", dec_t(T[t:te]))
            if a == b and not a.endswith("\ufffd"):
                chunks += 1
                s, t, matched = se, te, True
                break
            prev = (se, te)
            if len(a) < len(b):
                se, te = (se + 1, te) if se < n else (se, te + 1)
            elif len(a) > len(b):
                se, te = (se, te + 1) if te < m else (se + 1, te)
            else:
                if a.endswith("\ufffd") and not b.endswith("\ufffd"):
                    se, te = (se + 1, te) if se < n else (se, te + 1)
                elif b.endswith("\ufffd") and not a.endswith("\ufffd"):
                    se, te = (se, te + 1) if te < m else (se + 1, te)
                else:
                    se, te = se + (se < n), te + (te < m)
            if (se, te) == prev:
                break
        if not matched:
            break
    return chunks


def main():
    st = Tokenizer.from_file(sys.argv[1] + "/tokenizer.json")
    tt = Tokenizer.from_file(sys.argv[2] + "/tokenizer.json")
    texts = [response(i) for i in range(8)]
    pairs = [(st.encode(x, add_special_tokens=False).ids, tt.encode(x, add_special_tokens=False).ids) for x in texts]
    dec_s = lambda ids: st.decode(ids, skip_special_tokens=False)
    dec_t = lambda ids: tt.decode(ids, skip_special_tokens=False)
    times, chunks = [], 0
    for _ in range(3):
        t0 = time.perf_counter()
        chunks = sum(align(a, b, dec_s, dec_t) for a, b in pairs)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    tokens = sum(len(a) for a, _ in pairs) / len(pairs)
    print(json.dumps({"side": "python-reference", "mode": "dpca", "responses": len(pairs), "student_tokens": tokens,
                      "chunks": chunks, "median_s": med, "min_s": min(times), "max_s": max(times),
                      "us_per_response": med / len(pairs) * 1e6}))


if __name__ == "__main__":
    main()
