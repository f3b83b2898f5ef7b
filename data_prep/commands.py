"""The embedded spoken-commands dataset: espeak-ng and Festival say the 10 Speech Commands words.

A model trained on this data should also recognise other voices (other TTS engines,
real people), so the generator aims for wide variation rather than clean TTS:

  speaker   = an espeak-ng voice (espeak_voices.py: 8 English accents, 8 other languages speaking the
              English words, respelled so they sound like accented English) + a voice
              variant (+m1..+m8, +f1..+f5, +croak, +klatt.., +whisper, named voices ...),
              with its own base speed, pitch, pitch range and amplitude;
              or a Festival voice (festival_voices.py: voices made from recordings of
              people, English, Italian, Czech, Finnish, Russian, Catalan), with its own
              speed and vocal-tract scale; each says every word FESTIVAL_TAKES times, and
              Festival speakers say FESTIVAL_SHARE of each word's utterances (all in training);
  utterance = the speaker's settings jittered, then augmented: mild pitch/tempo change
              by resampling, optional small reverb, a random place in the 1 s window,
              background noise (white, pink, brown, hum, babble-like) at a random SNR
              (clean, 20, 10, 5 dB), microphone colour (high-pass, low-pass, one EQ
              bell) and a random recording level.

Output, in the Speech Commands layout (what `pipeline.datasets` reads):

  DIR/<word>/<speaker>_nohash_<n>.wav   16 kHz mono 16-bit PCM, exactly 16000 samples: the 10 commands,
                                        and AUX_WORDS (each speaker says aux_per_speaker of them): the
                                        words a 12-label keyword spotter learns as `_unknown_`
  DIR/_background_noise_/<name>.wav     background_seconds of noise each (command_noise.py): `_silence_`
  DIR/validation_list.txt               "<word>/<file>" lines, relative to DIR
  DIR/testing_list.txt                  files in neither list are training
  DIR/commands.json                     the parameters, so a rerun resumes (or refuses)

Splits are by speaker (a Festival voice is one speaker, and trains) (about 10% validation, 10% test, at least one speaker each) and
every speaker says every command, so every command appears in every split.

Determinism: every random choice comes from a numpy Generator seeded by
(seed, speaker) or (seed, speaker, word, n), never from the order in which the
worker pool happens to run jobs, and espeak-ng itself is deterministic; the same
seed gives byte-identical WAVs and lists.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soxr
from scipy import signal

from data_prep.command_noise import BACKGROUND_RECORDINGS, NOISE_KINDS, background_recording, noise
from data_prep.espeak_voices import (
    ENGLISH_SHARE,
    ENGLISH_VOICES,
    ESPEAK_ACCENTS,
    PITCH_RANGE,
    SPEED_RANGE,
    VARIANTS,
    espeak_version,
    espeak_wav,
    find_espeak,
    installed_voices_and_variants,
)
from data_prep.festival_voices import LR_INTONATION_VOICES, VOICE_LANGUAGES, festival_wav, find_festival, installed_voices
from pipeline.errors import UserError
from pipeline.files import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipeline.labels import BACKGROUND_NOISE
from pipeline.progress import progress_bar

COMMAND_WORDS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go"]
# Words that are not commands, said into folders of their own: the `_unknown_` class of a keyword spotter.
# The first 25 are Speech Commands v2's auxiliary words; the rest widen what "another word" sounds like.
# None is a word of data_prep.flite_voices, the held-out set.
AUX_WORDS = [
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "learn", "follow", "forward", "backward", "visual",
    "hello", "please", "water", "music", "table", "window", "morning", "yellow", "open", "under",
]

SAMPLE_RATE = 16000
CLIP_SAMPLES = 16000  # exactly 1 s, like Speech Commands
MAX_SPEECH_SECONDS = 0.95  # the spoken part must fit the window with a little room
VAL_FRACTION = 0.1
TEST_FRACTION = 0.1
FORMAT_VERSION = 3  # bump when the audio recipe changes: old folders are then refused, not mixed

# ----------------------------------------------------------------------------- voices

# Other languages speaking the English words. Read with the language's own spelling
# rules some words come out as a different word (Swedish "go" -> [ɡuː]), so those are
# respelled to sound like the English word said with that accent (to see how a voice
# reads a spelling: `espeak-ng -v LANG -q --ipa TEXT`). Words not listed are read as written.
ACCENT_SPELLINGS: dict[str, dict[str, str]] = {
    "de": {"yes": "jess", "up": "app", "down": "daun", "right": "rait", "on": "onn", "stop": "stopp"},
    "nl": {"yes": "jes", "up": "ap", "down": "dauwn", "right": "rait"},
    "sv": {"yes": "jess", "no": "nå", "up": "app", "down": "dawn", "right": "rajt", "on": "ån",
           "stop": "stopp", "go": "gå"},
    "es": {"up": "ap", "down": "daun", "right": "rait", "off": "of", "stop": "estop", "go": "gou"},
    "fr-fr": {"yes": "yesse", "up": "eupe", "on": "onne", "off": "offe"},
    "it": {"yes": "ies", "up": "ap", "down": "daun", "right": "rait", "go": "gou"},
    "pt-br": {"yes": "iés", "no": "nôu", "up": "âp", "down": "dáun", "left": "léft", "on": "ón",
              "off": "óff", "stop": "stóp", "go": "gôu"},
    "pl": {"no": "nou", "up": "ap", "down": "daun", "right": "rajt", "off": "of", "go": "gou"},
    # Festival's voices of these languages (checked with Festival's (utt.relation.items u 'Segment))
    "cs": {"yes": "jes", "no": "nou", "up": "ap", "down": "daun", "right": "rajt", "go": "gou"},
    "fi": {"yes": "jes", "no": "nou", "up": "ap", "down": "daun", "right": "rait", "go": "gou"},
    "ru": {"yes": "йес", "no": "ноу", "up": "ап", "down": "даун", "left": "лефт", "right": "райт", "on": "он",
           "off": "оф", "stop": "стоп", "go": "гоу"},
    "ca": {"yes": "ies", "no": "nou", "up": "ap", "down": "daun", "right": "rait", "go": "gou"},
}

# Share of each word's utterances said by Festival voices, each voice FESTIVAL_TAKES times (with its own jitter).
FESTIVAL_SHARE = 1 / 3  # 100 per word: all 11 voices
FESTIVAL_TAKES = 3
ENGINES = ("espeak-ng", "festival")

# Fixed tags that give choosing speakers and splitting them random streams of their own,
# apart from the per-speaker (seed, speaker id) and per-utterance streams.
_PICK_STREAM = 0x91C4
_SPLIT_STREAM = 0x5B17
_AUX_STREAM = 0xA0C5
_BACKGROUND_STREAM = 0xB6A9


# ----------------------------------------------------------------------------- speakers and splits


@dataclass(frozen=True)
class Speaker:
    id: str  # 8 hex digits, a hash of voice+variant (like Speech Commands' speaker ids)
    voice: str  # espeak-ng language voice, e.g. "en-gb-scotland" or "de"; or a Festival voice, e.g. "czech_ph"
    variant: str  # "" or an espeak-ng variant name, e.g. "f3"
    speed: int  # base words per minute; each utterance jitters around it (Festival: duration stretch 170/speed)
    pitch: int  # base pitch 0-99 (espeak-ng only)
    pitch_range: int  # SSML prosody range in percent: 100 is espeak's normal intonation (espeak-ng only)
    amplitude: int  # espeak -a; lowered on retry if espeak's own output clips (espeak-ng only)
    engine: str = "espeak-ng"  # "espeak-ng" or "festival"
    tract: float = 1.0  # the voice resampled as if its vocal tract (and pitch) were this much smaller (> 1) or larger


def speaker_id(voice: str, variant: str) -> str:
    return hashlib.sha1(f"{voice}+{variant}".encode()).hexdigest()[:8]


def _festival_speaker(voice: str, seed: int) -> Speaker:
    """A Festival voice as a speaker: its own speed and vocal-tract scale, drawn from (seed, speaker) only."""
    sid = speaker_id(f"festival:{voice}", "")
    rng = np.random.default_rng([seed, int(sid, 16)])
    return Speaker(id=sid, voice=voice, variant="", speed=int(rng.integers(130, 211)), pitch=0, pitch_range=0,
                   amplitude=0, engine="festival", tract=round(float(rng.uniform(0.86, 1.18)), 3))


def _speaker(voice: str, variant: str, seed: int) -> Speaker:
    """A speaker's fixed traits, drawn from (seed, speaker) only."""
    sid = speaker_id(voice, variant)
    rng = np.random.default_rng([seed, int(sid, 16)])
    return Speaker(
        id=sid, voice=voice, variant=variant,
        speed=int(rng.integers(130, 211)),
        pitch=int(rng.integers(15, 86)),
        pitch_range=int(rng.integers(40, 181)),
        amplitude=int(rng.integers(40, 101)),
    )


def pick_speakers(n: int, seed: int, voices: set[str], variants: set[str]) -> list[Speaker]:
    """n distinct espeak-ng voice+variant speakers, English accents weighted to ENGLISH_SHARE, sorted by id."""
    english = [(v, var) for v in ENGLISH_VOICES if v in voices for var in VARIANTS if var in variants]
    accented = [(v, var) for v in ESPEAK_ACCENTS if v in voices for var in VARIANTS if var in variants]
    combos = english + accented
    if not english:
        raise UserError("espeak-ng has no English voice (en-us, en-gb, ...): reinstall espeak-ng with its voice data")
    share = ENGLISH_SHARE if accented else 1.0
    p = np.array([share / len(english)] * len(english) + [(1 - share) / max(1, len(accented))] * len(accented))
    rng = np.random.default_rng([seed, _PICK_STREAM])
    chosen = rng.choice(len(combos), size=min(n, len(combos)), replace=False, p=p / p.sum())
    return sorted((_speaker(*combos[i], seed) for i in chosen), key=lambda s: s.id)


def pick_voicings(per_word: int, seed: int, voices: set[str], variants: set[str], festival_voices: list[str],
                  festival_takes: int = FESTIVAL_TAKES) -> tuple[list[Speaker], list[tuple[Speaker, int]]]:
    """(speakers sorted by id, per_word (speaker, take) pairs that each say every word).

    Festival voices, as many as FESTIVAL_SHARE of per_word holds at FESTIVAL_TAKES each, say festival_takes takes
    each; espeak-ng speakers the rest, a second take each only once every espeak-ng voice+variant says the word once.
    """
    n_festival = min(len(festival_voices), int(per_word * FESTIVAL_SHARE) // FESTIVAL_TAKES)
    festival = [_festival_speaker(voice, seed) for voice in festival_voices[:n_festival]]  # English first
    n_espeak = per_word - n_festival * festival_takes
    if n_espeak < 3:
        raise UserError(f"festival_takes={festival_takes}: {n_festival} Festival voices would say {n_festival * festival_takes} "
                        f"of {per_word} utterances per word; espeak-ng needs 3 (one speaker each for train, validation and test)")
    espeak = pick_speakers(n_espeak, seed, voices, variants)
    takes = -(-n_espeak // len(espeak))  # ceil: > 1 only when n_espeak exceeds the voice+variant pairs
    voicings = [(s, n) for s in festival for n in range(festival_takes)]
    voicings += [(s, n) for n in range(takes) for s in espeak][:n_espeak]
    return sorted(festival + espeak, key=lambda s: s.id), voicings


def split_speakers(speakers: list[Speaker], seed: int) -> dict[str, str]:
    """{speaker id: 'train'|'val'|'test'}: about 10% of the espeak-ng speakers val and 10% test, at least one each.

    Festival voices are few and the only voices made from people: all of them train. Validation and test measure
    unseen espeak-ng speakers; data_prep.flite_voices measures voices of another synthesiser.
    """
    split = {s.id: "train" for s in speakers if s.engine == "festival"}
    speakers = [s for s in speakers if s.engine != "festival"]
    n = len(speakers)
    n_val = max(1, round(VAL_FRACTION * n))
    n_test = max(1, round(TEST_FRACTION * n))
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n)
    for rank, i in enumerate(order):
        split[speakers[i].id] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return split


# ----------------------------------------------------------------------------- speech


def _trim(x: np.ndarray, sr: int, top_db: float = 40.0) -> np.ndarray:
    """The spoken part of x (float [N]): 5-ms frames within top_db of the loudest, plus 10 ms each side."""
    hop = sr // 200
    frames = np.abs(x[: len(x) // hop * hop]).reshape(-1, hop).max(axis=1)
    loud = np.flatnonzero(frames > frames.max() * 10 ** (-top_db / 20))
    start = max(0, (loud[0] - 2) * hop)
    end = min(len(x), (loud[-1] + 3) * hop)
    return x[start:end]


def speak(tools: dict[str, str], speaker: Speaker, word: str, rng: np.random.Generator,
          festival_f0: tuple[float, float] | None = None) -> np.ndarray:
    """One word said by speaker, trimmed, perturbed and resampled: speech float64 [<= 0.95 s at 16 kHz].

    tools: {engine: executable} for the engines in use (find_engines).
    festival_f0: (low, high) Hz: a Festival voice of LR_INTONATION_VOICES says it at a mean pitch drawn from it.
    """
    language = VOICE_LANGUAGES[speaker.voice] if speaker.engine == "festival" else speaker.voice
    text = ACCENT_SPELLINGS.get(language, {}).get(word, word)
    voice = f"{speaker.voice}+{speaker.variant}" if speaker.variant else speaker.voice
    speed = int(np.clip(speaker.speed + rng.normal(0, 12), *SPEED_RANGE))
    pitch = int(np.clip(speaker.pitch + rng.integers(-6, 7), *PITCH_RANGE))
    amplitude = speaker.amplitude
    # Pitch and tempo together, as a tape running fast or slow: pretend the audio was
    # recorded at rate*factor, then resample to 16 kHz. The speaker's vocal tract scales the same way.
    factor = speaker.tract * (rng.uniform(0.92, 1.08) if rng.random() < 0.5 else 1.0)
    max_len = int(MAX_SPEECH_SECONDS * SAMPLE_RATE)
    f0_mean = None
    if festival_f0 is not None and speaker.engine == "festival" and speaker.voice in LR_INTONATION_VOICES:
        f0_mean = float(np.exp(rng.uniform(*np.log(festival_f0))))  # uniform in log frequency: as many octaves up as down
    for attempt in range(8):
        if speaker.engine == "festival":
            raw, rate = festival_wav(tools["festival"], speaker.voice, text, stretch=170 / speed, f0_mean=f0_mean)
        else:
            raw, rate = espeak_wav(tools["espeak-ng"], text, voice, speed, pitch, speaker.pitch_range, amplitude)
        if speaker.engine == "espeak-ng" and np.abs(raw.astype(np.int32)).max() >= 32767 and attempt < 7:
            amplitude = max(5, int(amplitude * 0.6))  # espeak clipped its own output: say it softer
            continue
        speech = soxr.resample(_trim(raw / 32768.0, rate), rate * factor, SAMPLE_RATE)
        if len(speech) <= max_len:
            return speech
        speed = int(speed * 1.2)  # too long for the 1 s window: say it faster
    # Still too long: squeeze it in by resampling (raises the pitch a little too).
    return soxr.resample(speech, len(speech), max_len)[:max_len]


# ----------------------------------------------------------------------------- augmentation


def add_reverb(speech: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small room: exponentially decaying noise as impulse response. speech float [N] -> float [N + tail]."""
    rt60 = rng.uniform(0.08, 0.35)  # seconds for the tail to decay by 60 dB
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    tail = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
    ir = np.concatenate([[1.0], rng.uniform(0.1, 0.5) * tail / np.sqrt(np.sum(tail ** 2))])
    return signal.fftconvolve(speech, ir)


SNR_CHOICES_DB = (None, 20.0, 10.0, 5.0)  # None = clean
SNR_PROBABILITIES = (0.3, 0.25, 0.25, 0.2)


def mic_colour(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A cheap microphone/room colour: maybe high-pass, maybe low-pass, maybe one EQ bell. float [N] -> [N]."""
    if rng.random() < 0.7:
        x = signal.sosfilt(signal.butter(2, rng.uniform(50, 300), "highpass", fs=SAMPLE_RATE, output="sos"), x)
    if rng.random() < 0.6:
        x = signal.sosfilt(signal.butter(4, rng.uniform(3000, 7500), "lowpass", fs=SAMPLE_RATE, output="sos"), x)
    if rng.random() < 0.5:  # peaking EQ biquad (RBJ audio EQ cookbook)
        gain_db, f0, q = rng.uniform(-8, 8), rng.uniform(300, 4000), rng.uniform(0.5, 2.0)
        a_lin, w0 = 10 ** (gain_db / 40), 2 * np.pi * f0 / SAMPLE_RATE
        alpha = np.sin(w0) / (2 * q)
        b = [1 + alpha * a_lin, -2 * np.cos(w0), 1 - alpha * a_lin]
        a = [1 + alpha / a_lin, -2 * np.cos(w0), 1 - alpha / a_lin]
        x = signal.lfilter(b, a, x)
    return x


def render_utterance(tools: dict[str, str], speaker: Speaker, word: str, n: int, seed: int,
                     festival_f0: tuple[float, float] | None = None) -> np.ndarray:
    """The finished clip for (speaker, word, n): waveform int16 [16000] (festival_f0: see speak)."""
    rng = np.random.default_rng([seed, int(speaker.id, 16), (COMMAND_WORDS + AUX_WORDS).index(word), n])
    speech = speak(tools, speaker, word, rng, festival_f0)
    speech = speech / np.abs(speech).max()
    speech_power = np.mean(speech ** 2)  # before reverb: the SNR refers to the dry voice

    # Random place in the window; the whole word fits, with 10 ms to spare when it can.
    margin = min(160, (CLIP_SAMPLES - len(speech)) // 2)
    offset = int(rng.integers(margin, CLIP_SAMPLES - len(speech) - margin + 1))
    if rng.random() < 0.3:
        speech = add_reverb(speech, rng)
    window = np.zeros(CLIP_SAMPLES)
    part = speech[: CLIP_SAMPLES - offset]  # a reverb tail may run past the end: cut it, with a 5-ms fade
    if len(part) < len(speech):
        part = part * np.concatenate([np.ones(len(part) - 80), np.linspace(1, 0, 80)])
    window[offset:offset + len(part)] = part

    snr_db = SNR_CHOICES_DB[rng.choice(len(SNR_CHOICES_DB), p=SNR_PROBABILITIES)]
    if snr_db is not None:
        kind = NOISE_KINDS[rng.integers(len(NOISE_KINDS))]
        window += noise(kind, CLIP_SAMPLES, rng) * np.sqrt(speech_power / 10 ** (snr_db / 10))

    window = mic_colour(window, rng)
    # Recording level: the loudest sample lands between -18 and -1 dBFS, so never clipped.
    peak_db = rng.uniform(-18, -1)
    window *= 10 ** (peak_db / 20) / np.abs(window).max()
    return np.round(window * 32767).astype(np.int16)


def wav_bytes(waveform: np.ndarray) -> bytes:
    """A plain 44-byte-header WAV of waveform int16 [N] at 16 kHz (no dates or tags: byte-identical reruns)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(waveform.astype("<i2").tobytes())
    return buf.getvalue()


# ----------------------------------------------------------------------------- the dataset


def _relpath(speaker: Speaker, word: str, n: int) -> str:
    return f"{word}/{speaker.id}_nohash_{n}.wav"


def _render_job(job: tuple[str, dict, dict, str, int, int, tuple[float, float] | None]) -> str:
    """Pool worker: render one clip and write it atomically, so a crash never leaves half a WAV."""
    root, tools, speaker, word, n, seed, festival_f0 = job
    speaker = Speaker(**speaker)
    path = Path(root) / _relpath(speaker, word, n)
    atomic_write_bytes(path, wav_bytes(render_utterance(tools, speaker, word, n, seed, festival_f0)))
    return path.name


def _check_out_dir(out: Path, params: dict) -> None:
    """Refuse to write into a folder that holds something else; allow resuming the same dataset."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder; choose a new output folder for the commands dataset")
    if not out.is_dir() or not any(out.iterdir()):
        return
    marker = out / "commands.json"
    if not marker.is_file():
        raise UserError(f"{out}: folder is not empty; choose a new or empty output folder for the commands dataset")
    try:
        previous = json.loads(marker.read_text())
    except ValueError:
        raise UserError(f"{marker}: unreadable; delete {out} and generate again") from None
    if {k: previous.get(k) for k in params} != params:
        raise UserError(f"{out}: holds a commands dataset made with {previous}, not {params}; "
                        "choose another folder or delete this one")


def aux_words_of(speaker: Speaker, count: int, seed: int) -> list[str]:
    """The `count` auxiliary (non-command) words a speaker says, drawn from (seed, speaker) only."""
    rng = np.random.default_rng([seed, int(speaker.id, 16), _AUX_STREAM])
    return [AUX_WORDS[i] for i in sorted(rng.choice(len(AUX_WORDS), size=min(count, len(AUX_WORDS)), replace=False))]


def write_background(out: Path, tools: dict[str, str], speakers: list[Speaker], seconds: float, seed: int) -> list[str]:
    """Write _background_noise_/<name>.wav for every BACKGROUND_RECORDINGS name; returns the file names.

    The babble is made of auxiliary words said by training speakers, so no command and no test voice is in it.
    """
    folder = out / BACKGROUND_NOISE
    todo = [name for name in BACKGROUND_RECORDINGS if not (folder / f"{name}.wav").exists()]
    if todo:
        rng = np.random.default_rng([seed, _BACKGROUND_STREAM])
        words = [speak(tools, speakers[rng.integers(len(speakers))], AUX_WORDS[rng.integers(len(AUX_WORDS))], rng)
                 for _ in range(24)] if "speech_babble" in todo else []
        for name in BACKGROUND_RECORDINGS:  # every recording its own stream: resuming gives the same bytes
            if name in todo:
                x = background_recording(name, seconds, np.random.default_rng([seed, _BACKGROUND_STREAM,
                                                                                BACKGROUND_RECORDINGS.index(name)]), words)
                atomic_write_bytes(folder / f"{name}.wav", wav_bytes(np.round(x * 0.5 * 32767).astype(np.int16)))
    return [f"{name}.wav" for name in BACKGROUND_RECORDINGS]


def find_engines(engines: tuple[str, ...]) -> dict[str, str]:
    """{engine: executable} for each of `engines` (of ENGINES), or a one-line UserError naming what is missing."""
    unknown = [e for e in engines if e not in ENGINES]
    if unknown or "espeak-ng" not in engines:
        raise UserError(f"engines={','.join(engines)}: must include espeak-ng, and only of {', '.join(ENGINES)}")
    return {engine: find_espeak() if engine == "espeak-ng" else find_festival() for engine in engines}


def make_commands(out: str | Path, per_word: int = 60, seed: int = 0, progress: bool = True,
                  workers: int = 2, aux_per_speaker: int = 8, background_seconds: float = 60.0,
                  engines: tuple[str, ...] = ENGINES, held_out_voices: bool = False,
                  festival_takes: int = FESTIVAL_TAKES, festival_f0: tuple[float, float] | None = None) -> dict:
    """Generate the spoken-commands dataset into out (Speech Commands layout; see the module docstring).

    per_word (speaker, take) pairs each say every command once (pick_voicings: Festival voices say
    FESTIVAL_SHARE of them when "festival" is in `engines`), and `aux_per_speaker` of the AUX_WORDS into
    their own folders (0: none).
    `background_seconds` of each BACKGROUND_RECORDINGS noise go to _background_noise_/ (0: none).
    held_out_voices: Festival's English voices of speakers Flite also has (festival_voices.HELD_OUT_VOICES) speak
    too, first; an experiment's (benchmarks/speech_robustness.py), whose held-out set then leaves those speakers out.
    festival_takes: how many times each Festival voice says each word (pick_voicings), another experiment's.
    festival_f0: (low, high) Hz: Festival's English diphone voice says each utterance at a mean pitch drawn from it
    (speak), another experiment's: one recorded man's voice as higher and lower voices.
    An interrupted run resumes: finished WAVs are kept, since a rerun with the same parameters
    would write the same bytes.

    Returns {root, words, aux_words, background, files, counts: {split: files}, speakers: {split: speakers}, seconds}.
    """
    engines = tuple(engines)
    tools = find_engines(engines)
    if per_word < 3:
        raise UserError(f"per_word={per_word}: need at least 3 (one speaker each for train, validation and test)")
    if seed < 0:
        raise UserError(f"seed={seed}: must be a non-negative integer")
    if aux_per_speaker < 0 or aux_per_speaker > len(AUX_WORDS):
        raise UserError(f"aux_per_speaker={aux_per_speaker}: must be between 0 and {len(AUX_WORDS)} (the auxiliary words)")
    if background_seconds != 0 and not 1 <= background_seconds <= 3600:
        raise UserError(f"background_seconds={background_seconds:g}: must be 0 (none) or between 1 and 3600")
    out = Path(out)
    started = time.perf_counter()
    festival_voices = installed_voices(tools["festival"], held_out_voices) if "festival" in tools else []
    # the Festival voices installed are a parameter: resuming with others would mix two datasets in one folder
    params = {"generator": "data_prep.commands", "version": FORMAT_VERSION, "per_word": per_word, "seed": seed,
              "aux_per_speaker": aux_per_speaker, "background_seconds": background_seconds, "engines": list(engines),
              "festival_voices": festival_voices, **({"festival_takes": festival_takes} if festival_takes != FESTIVAL_TAKES else {}),
              **({"festival_f0": list(festival_f0)} if festival_f0 is not None else {})}
    _check_out_dir(out, params)

    voices, variants = installed_voices_and_variants(tools["espeak-ng"])
    speakers, voicings = pick_voicings(per_word, seed, voices, variants, festival_voices, festival_takes)
    if len(speakers) < 3:
        raise UserError(f"espeak-ng offers only {len(speakers)} voice+variant pair(s); 3 are needed for train/val/test")
    split_of = split_speakers(speakers, seed)
    utterances = [(word, s, n) for word in COMMAND_WORDS for s, n in voicings]
    utterances += [(word, s, n) for s, n in voicings for word in aux_words_of(s, aux_per_speaker, seed)]

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "commands.json", {**params, "espeak": espeak_version(tools["espeak-ng"]),
                                              "speakers": [asdict(s) for s in speakers]})
    # A resumed run keeps the WAVs it finds: they hold the bytes this run would write.
    todo = [(str(out), tools, asdict(s), word, n, seed, festival_f0) for word, s, n in utterances
            if not (out / _relpath(s, word, n)).exists()]
    total = len(utterances)
    bar = progress_bar(total=total, initial=total - len(todo), desc="spoken commands", unit="wav", disable=not progress)
    if workers <= 1 or len(todo) < 16:  # starting a pool costs seconds: not worth it for a few files
        for job in todo:
            _render_job(job)
            bar.update()
    else:
        # spawn, not fork: the caller may have TensorFlow loaded, and forking it can hang
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(_render_job, todo, chunksize=8):
                bar.update()
    bar.close()
    background = []
    if background_seconds:
        background = write_background(out, tools, [s for s in speakers if split_of[s.id] == "train"], background_seconds, seed)

    lists = {"val": [], "test": []}
    counts = {"train": 0, "val": 0, "test": 0}
    for word, s, n in utterances:
        split = split_of[s.id]
        counts[split] += 1
        if split in lists:
            lists[split].append(_relpath(s, word, n))
    atomic_write_text(out / "validation_list.txt", "".join(f"{r}\n" for r in sorted(lists["val"])))
    atomic_write_text(out / "testing_list.txt", "".join(f"{r}\n" for r in sorted(lists["test"])))

    return {
        "root": str(out),
        "words": list(COMMAND_WORDS),
        "aux_words": sorted({word for word, _, _ in utterances} - set(COMMAND_WORDS)),
        "background": background,
        "files": total,
        "counts": counts,
        "speakers": {split: sum(1 for s in speakers if split_of[s.id] == split) for split in counts},
        "seconds": round(time.perf_counter() - started, 2),
    }
