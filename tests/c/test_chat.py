#!/usr/bin/env python3
"""make test-chat: drives examples-c/chat.c through its stdin and stdout.

    test_chat.py <chat binary> <model.gguf>

Checks that the conversation is kept (the second turn reuses the first from
the KV cache), that /reset forgets it, and that SIGINT (Ctrl-C) in the middle
of an answer stops that answer, prints "[stopped]" and leaves the chat running.
"""
import os
import re
import select
import signal
import subprocess
import sys
import time

STATS = re.compile(
    r"\[(\d+) tokens, [\d.]+ tokens/s; prompt (\d+) tokens, (\d+) of them reused from the cache\]"
)
PROMPT = "you> "
LIMIT_S = 300

passed = 0
failed = 0
children = []


def check(name, ok, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"ok - {name}")
    else:
        failed += 1
        print(f"FAIL - {name}" + (f": {detail}" if detail else ""))


class Chat:
    def __init__(self, binary, model, *args):
        self.p = subprocess.Popen(
            [binary, *args, model], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        children.append(self.p)
        self.out = b""
        self.deadline = time.monotonic() + LIMIT_S

    def read_some(self):
        """Reads what the program has written so far (blocks for some)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no answer within {LIMIT_S} s; output so far: {self.out!r}")
        ready, _, _ = select.select([self.p.stdout], [], [], left)
        if not ready:
            raise TimeoutError(f"no answer within {LIMIT_S} s; output so far: {self.out!r}")
        data = os.read(self.p.stdout.fileno(), 65536)
        if not data:
            raise EOFError(f"the chat ended; output: {self.out!r}")
        self.out += data
        return data

    def until(self, marker):
        """Reads up to and including `marker`; returns the text before it."""
        while marker.encode() not in self.out:
            self.read_some()
        before, _, self.out = self.out.partition(marker.encode())
        return before.decode("utf-8", "replace")

    def say(self, line):
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def turn(self, line):
        """One question; returns (answer text, completion, prompt, reused)."""
        self.say(line)
        text = self.until(PROMPT)
        m = STATS.search(text)
        if not m:
            raise AssertionError(f"no usage line after the answer to {line!r}: {text!r}")
        return text[: m.start()], int(m.group(1)), int(m.group(2)), int(m.group(3))

    def finish(self):
        self.p.stdin.close()
        rest = self.p.stdout.read()
        return self.p.wait(timeout=60), rest


def conversation(binary, model):
    chat = Chat(binary, model, "-t", "0", "-n", "48")
    chat.until(PROMPT)
    q = "What is the capital of France?"
    answer1, n1, p1, _ = chat.turn(q)
    check("the first answer has text", n1 > 0 and answer1.strip() != "", repr(answer1))
    _, _, p2, r2 = chat.turn("And what is the capital of Germany?")
    check(
        f"the second turn reuses the first from the KV cache ({r2} of {p2} prompt tokens; "
        f"the first prompt had {p1})",
        r2 >= p1 and p2 > p1,
    )
    chat.say("/reset")
    forgot = chat.until(PROMPT)
    check("/reset says the conversation is forgotten", "[conversation forgotten]" in forgot, forgot)
    answer3, _, p3, _ = chat.turn(q)
    check(f"after /reset the prompt is the first turn's again ({p3} == {p1} tokens)", p3 == p1)
    check("greedy: the same question gives the same answer after /reset", answer3 == answer1,
          f"{answer1!r} != {answer3!r}")
    code, _ = chat.finish()
    check("end of input leaves with status 0", code == 0, str(code))


def ctrl_c(binary, model):
    chat = Chat(binary, model, "-t", "0", "-n", "2000")
    chat.until(PROMPT)
    chat.say("Count from 1 to 1000, one number per line.")
    chat.read_some()  # the first piece of the answer has arrived: it streams
    chat.p.send_signal(signal.SIGINT)
    text = chat.until(PROMPT)
    check("Ctrl-C stops the answer being generated", "[stopped]" in text, text[-200:])
    check("the chat is still running after Ctrl-C", chat.p.poll() is None)
    chat.say("/reset")
    forgot = chat.until(PROMPT)
    check("it still takes commands after Ctrl-C", "[conversation forgotten]" in forgot, forgot)
    chat.say("/quit")
    code, _ = chat.finish()
    check("/quit leaves with status 0", code == 0, str(code))


def main():
    binary, model = sys.argv[1], sys.argv[2]
    for part in (conversation, ctrl_c):
        try:
            part(binary, model)
        except Exception as e:  # a broken exchange fails the part, loudly
            check(part.__name__, False, f"{type(e).__name__}: {e}")
    for p in children:
        if p.poll() is None:
            p.kill()
            p.wait()
    print(f"test-chat: {passed} passed, {failed} failed")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
