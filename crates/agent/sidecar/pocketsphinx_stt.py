"""outdial speech-to-text sidecar: pocketsphinx (PyPI, bundles the en-us model), streaming.

One utterance at a time, fed while the caller speaks, so that at the end of the turn only
finalisation is left. Protocol on stdin/stdout:
  {"op": "start", "phrases": [...]}      begin an utterance (no reply)
  {"op": "audio", "samples": N}          then N little-endian int16 samples (16 kHz mono) as raw
                                         bytes (no reply)
  {"op": "end"}                          reply {"text": "...", "confidence": 0.0-1.0,
                                         "ms": finalisation_ms, "audio_ms": fed_ms}
                                         or {"error": "..."}
  {"op": "cancel"}                       reply {"canceled": true}
A "ready" line is printed once the model is loaded, so the parent knows start-up finished.
An error while starting or feeding is remembered and reported by the next end/cancel, so
replies always pair with requests.

With phrases, recognition is constrained to a word loop over their vocabulary plus common words
(a JSGF grammar): exact on the words an agent expects, and still able to return other speech
made of common words. Without phrases, the bundled general language model is used.
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

# Cepstral mean of G.711 telephone speech through the 8 -> 16 kHz path, measured here after a
# few utterances. Live CMN starts every utterance from it: from the model's default the first
# word of a call was lost, and carrying the mean over from utterance to utterance let it drift
# (trailing silence pulls it), so each utterance starts from the same prior.
CMN_PRIOR = "44,10,-18,18,-9,-4,0,-13,9,-5,1,3,-7"

out = sys.stdout
inp = sys.stdin.buffer
# bestpath: the lattice rescoring pass took ~2 s at end_utt on a streamed 2.5 s utterance
# (nothing gained in accuracy on the phone path); without it end_utt takes ~1 ms.
decoder = Decoder(loglevel="FATAL", cmn="live", cmninit=CMN_PRIOR, bestpath=False)
default_search = decoder.current_search()
grammars = {}


def clean(word):
    return "".join(c for c in word.lower() if c.isalpha() or c == "'")


def activate(phrases):
    if not phrases:
        decoder.activate_search(default_search)
        return
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


# The word loop's one-syllable fillers. Audio that matches no expected phrase (a mishearing,
# a voice the model does not know, line noise) is decoded as a run of them ("the i on it i not
# on it i"): the share of word time that went elsewhere is the confidence.
FILLERS = {"a", "it", "on", "the", "uh", "um"}


def confidence():
    spoken = 0
    content = 0
    for seg in decoder.seg():
        word = seg.word.split("(")[0]
        if word.startswith("<") or word.startswith("[") or word == "(NULL)" or not word:
            continue
        frames = max(0, seg.end_frame - seg.start_frame + 1)
        spoken += frames
        if word not in FILLERS:
            content += frames
    return round(content / spoken, 3) if spoken else 0.0


def reply(obj):
    out.write(json.dumps(obj) + "\n")
    out.flush()


in_utt = False
failure = None
fed = 0

out.write("ready\n")
out.flush()
while True:
    header = inp.readline()
    if not header:
        break
    try:
        req = json.loads(header)
    except ValueError:
        break  # out of step with the parent: exit and let it start a fresh sidecar
    op = req.get("op")
    if op == "audio":
        n = int(req.get("samples", 0))
        audio = inp.read(n * 2)
        if len(audio) != n * 2:
            break
        fed += n
        if in_utt and failure is None:
            try:
                decoder.process_raw(audio, False, False)
            except Exception as e:
                failure = str(e)
    elif op == "start":
        if in_utt:
            try:
                decoder.end_utt()
            except Exception:
                pass
        in_utt, failure, fed = False, None, 0
        try:
            activate([str(p) for p in req.get("phrases") or []])
            decoder.set_cmn(CMN_PRIOR)
            decoder.start_utt()
            in_utt = True
        except Exception as e:
            failure = str(e)
    elif op in ("end", "cancel"):
        started = time.monotonic()
        text = ""
        conf = 0.0
        if in_utt:
            try:
                decoder.end_utt()
                hyp = decoder.hyp()
                text = hyp.hypstr if hyp is not None else ""
                conf = confidence() if text else 0.0
            except Exception as e:
                failure = failure or str(e)
        in_utt = False
        if op == "cancel":
            reply({"canceled": True})
        elif failure is not None:
            reply({"error": failure})
        else:
            ms = int((time.monotonic() - started) * 1000)
            reply({"text": text, "confidence": conf, "ms": ms, "audio_ms": fed // 16})
        failure = None
    else:
        break  # a request this sidecar does not know: out of step, as above
