"""outdial speech-to-text sidecar: pocketsphinx (PyPI, bundles the en-us model).

Protocol on stdin/stdout, one request at a time:
  request:  one JSON line {"samples": N, "phrases": [...]} then N little-endian int16
            samples (16 kHz mono) as raw bytes
  response: one JSON line {"text": "...", "ms": decode_ms} or {"error": "..."}
A "ready" line is printed once the model is loaded, so the parent knows start-up finished.
With phrases, recognition is constrained to a word loop over their vocabulary plus common
words (a JSGF grammar): exact on the words an agent expects, and still able to return other
speech made of common words. Without phrases, the bundled general language model is used.
"""
import json
import sys
import time

from pocketsphinx import Decoder

# Words people say around the expected phrases; a loop of them keeps an unexpected answer from
# being forced onto an expected phrase. Kept small: a JSGF word loop's decoding cost grows
# quickly with its vocabulary (150 words took tens of seconds here, 30 take well under one).
COMMON = (
    "a and by can friday i it later maybe no not now okay on pay please sorry sure "
    "thank the today tomorrow um uh week will yes you"
).split()

out = sys.stdout
inp = sys.stdin.buffer
decoder = Decoder(loglevel="FATAL")
grammars = {}


def clean(word):
    return "".join(c for c in word.lower() if c.isalpha() or c == "'")


def use_phrases(phrases):
    key = "\n".join(phrases)
    name = grammars.get(key)
    if name is None:
        vocab = set()
        for phrase in phrases:
            for word in phrase.split():
                w = clean(word)
                if w and decoder.lookup_word(w) is not None:
                    vocab.add(w)
        vocab.update(w for w in COMMON if decoder.lookup_word(w) is not None)
        alternatives = " | ".join(sorted(vocab))
        jsgf = "#JSGF V1.0;\ngrammar outdial;\npublic <utt> = <w>+;\n<w> = %s;\n" % alternatives
        name = "g%d" % len(grammars)
        decoder.add_jsgf_string(name, jsgf)
        grammars[key] = name
    decoder.activate_search(name)


# The search the decoder starts with is the bundled general language model.
default_search = decoder.current_search()


def activate(phrases):
    if phrases:
        use_phrases(phrases)
    else:
        decoder.activate_search(default_search)


out.write("ready\n")
out.flush()
while True:
    header = inp.readline()
    if not header:
        break
    try:
        req = json.loads(header)
        n = int(req["samples"])
        audio = inp.read(n * 2)
        if len(audio) != n * 2:
            break
        started = time.monotonic()
        activate([str(p) for p in req.get("phrases") or []])
        decoder.start_utt()
        decoder.process_raw(audio, full_utt=True)
        decoder.end_utt()
        hyp = decoder.hyp()
        text = hyp.hypstr if hyp is not None else ""
        ms = int((time.monotonic() - started) * 1000)
        out.write(json.dumps({"text": text, "ms": ms}) + "\n")
    except Exception as e:  # reported to the parent; the process stays up
        out.write(json.dumps({"error": str(e)}) + "\n")
    out.flush()
