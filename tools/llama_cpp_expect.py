#!/usr/bin/env python3
"""Writes llama.cpp's tokens and logits for a GGUF model as the committed expectations that
kvplan's tests check against (tests/data/<name>/). Run by tools/llama-cpp-expect.sh inside the
peer environment (tools/peer-env.sh: llama-cpp-python, which builds llama.cpp).

Writes, into OUT_DIR:
  tokens.json   each held-out text (code, digits, whitespace runs, non-Latin scripts) and its ids
  logits.json   the teacher-forced run over the first N ids of long.txt: at each chosen position,
                llama.cpp's 32 highest logits (ids and values), its log-sum-exp, and the top-2 margin
  greedy.json   greedy continuations of chat prompts (ChatML, rendered by kvplan's rules: the
                template's default system message first), each step's token and top-2 margin
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
from llama_cpp import Llama

TEXTS = [
    "Hello world! How are you today?",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 1024; ++i) { sum += a[i] * b[i]; }  // 3.14159e-3",
    "Numbers: 1234567890, 3.14159, -42, 1e10, 2026-12-07, 0x7f800000, 100000.",
    "Whitespace:  two   three    four\t\ttabs\n\n\nnewlines   \n  trailing   ",
    "Contractions: I'm, you're, they'll, we've, she'd, it's, DON'T, Y'ALL.",
    "Русский текст: Привет, мир! Как дела?",
    "日本語のテキスト：こんにちは世界。中文：你好，世界！한국어: 안녕하세요",
    "العربية: مرحبا بالعالم. Ελληνικά: Γειά σου κόσμε. हिन्दी: नमस्ते दुनिया",
    "Emoji and symbols: 🙂🚀 ✓ → ∑ ∫ ≤ ≥ € £ ¥ © ® ™ ½",
    "<|im_start|>user\nspecial pieces as text<|im_end|>",
    "   leading spaces and a URL: https://example.com/path?a=1&b=2#frag",
    "The quick brown fox jumps over the lazy dog. THE QUICK BROWN FOX!!! ...",
    "CamelCaseIdentifiers snake_case_names kebab-case-names SCREAMING_CASE",
    "Mixed: abc123def 456ghi 7.8.9 v1.2.3-rc4 ۱۲۳ ١٢٣ ４５６",
]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the GGUF file")
    ap.add_argument("--long-text", required=True, help="natural text of at least --positions tokens")
    ap.add_argument("--out", required=True, help="the directory to write")
    ap.add_argument("--positions", type=int, default=8192, help="tokens of the teacher-forced run")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()

    llm = Llama(model_path=args.model, n_ctx=args.positions, n_batch=512, n_ubatch=512, logits_all=True,
                n_threads=args.threads, verbose=False)
    os.makedirs(args.out, exist_ok=True)

    def tok(text):
        return llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    texts = [{"text": t, "tokens": tok(t)} for t in TEXTS]
    with open(args.long_text, encoding="utf-8") as f:
        long_text = f.read()
    long_ids = tok(long_text)
    if len(long_ids) < args.positions:
        sys.exit(f"{args.long_text}: {len(long_ids)} tokens, fewer than --positions {args.positions}")
    texts.append({"text": long_text, "tokens": long_ids, "file": os.path.basename(args.long_text)})
    write(os.path.join(args.out, "tokens.json"), {"peer": peer(), "texts": texts})

    ids = long_ids[: args.positions]
    t0 = time.time()
    llm.reset()
    llm.eval(ids)
    seconds = time.time() - t0
    scores = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
    chosen = sorted(set([0, 1, 2, 63, 511] + [p for c in (1024, 4096, 8192) if c <= len(ids)
                                              for p in (c - 64, c - 2, c - 1)]))
    rows = []
    for p in chosen:
        row = scores[p]
        order = np.argsort(-row, kind="stable")[:32]
        m = row.max()
        rows.append({"position": p, "top_ids": [int(i) for i in order], "top_logits": [float(row[i]) for i in order],
                     "logsumexp": float(m + math.log(np.exp(row - m).sum())),
                     "margin": float(row[order[0]] - row[order[1]])})
    write(os.path.join(args.out, "logits.json"),
          {"peer": peer(), "tokens": ids, "source": os.path.basename(args.long_text), "prefill_seconds": seconds,
           "threads": args.threads, "rows": rows})

    system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    prompts = ["What is the capital of France?", "Write a Python function that reverses a string.",
               "List three prime numbers greater than 100.", "Translate 'good morning' into Spanish.",
               "Remember this number: 73914. What number did I ask you to remember?"]
    greedy = []
    for q in prompts:
        rendered = (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n"
                    "<|im_start|>assistant\n")
        prompt = llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(prompt)
        out, margins = [], []
        for _ in range(32):
            row = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
            order = np.argsort(-row, kind="stable")[:2]
            out.append(int(order[0]))
            margins.append(float(row[order[0]] - row[order[1]]))
            if int(order[0]) == llm.token_eos():
                break
            llm.eval([int(order[0])])
        greedy.append({"user": q, "prompt": prompt, "tokens": out, "margins": margins})
    write(os.path.join(args.out, "greedy.json"), {"peer": peer(), "system": system, "cases": greedy})
    print(f"llama-cpp-expect: wrote {args.out} ({len(ids)}-token prefill in {seconds:.1f} s)", file=sys.stderr)


def peer():
    import llama_cpp
    return f"llama-cpp-python {llama_cpp.__version__} (llama.cpp built from its sources, CPU)"


def write(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
