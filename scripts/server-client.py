#!/usr/bin/env python3
"""The client side of scripts/server-check.sh: sends the same chat
completions to a llama-server through the openai package (temperature 0,
fixed seed), a few at a time, and writes the answers as JSON lines.

usage: server-client.py BASE_URL ANSWERS_OUT [--chats N] [--concurrency C] [--max-tokens T]
prints: one line, "N chats, T completion tokens in S s: X tokens/s aggregate"
exits 1 (saying which) if any request fails.
"""
import argparse
import concurrent.futures
import json
import sys
import time

import openai

SUBJECTS = ["the sea", "a mountain", "bread", "the moon", "a library", "rain", "a bicycle", "winter"]
ASKS = ["Write one sentence about {}.", "Give three words that describe {}.",
        "What colour is {} most often?", "Tell a very short story about {}."]


def prompts(n):
    """n distinct user messages, the same in every run."""
    return [ASKS[i % len(ASKS)].format(SUBJECTS[(i // len(ASKS)) % len(SUBJECTS)]) + f" (#{i})" for i in range(n)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("answers_out")
    ap.add_argument("--chats", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="none", timeout=600, max_retries=0)

    def chat(i_text):
        i, text = i_text
        r = client.chat.completions.create(
            model="model", messages=[{"role": "user", "content": text}],
            temperature=0, seed=42, max_tokens=args.max_tokens)
        return i, r.choices[0].message.content, r.usage.completion_tokens

    start = time.monotonic()
    answers = {}
    failures = []
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        futures = [pool.submit(chat, p) for p in enumerate(prompts(args.chats))]
        for f in futures:
            try:
                i, content, tokens = f.result()
                answers[i] = (content, tokens)
            except Exception as e:  # every failure is reported, none hidden
                failures.append(f"{type(e).__name__}: {e}")
    seconds = time.monotonic() - start
    with open(args.answers_out, "w") as out:
        for i in sorted(answers):
            out.write(json.dumps({"chat": i, "answer": answers[i][0]}) + "\n")
    if failures:
        print(f"{len(failures)} of {args.chats} requests failed; the first: {failures[0]}")
        return 1
    tokens = sum(t for _, t in answers.values())
    print(f"{args.chats} chats, {tokens} completion tokens in {seconds:.1f} s: {tokens / seconds:.2f} tokens/s aggregate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
