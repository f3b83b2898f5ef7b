"""espeak-ng, the embedded commands' main synthesiser: its voices, variants and one call per utterance.

    text (respelled for accented voices: data_prep.commands.ACCENT_SPELLINGS) --espeak-ng -v VOICE+VARIANT -s -p -a,
        SSML prosody range--> WAV int16 at 22050 Hz

Install: `apt-get install espeak-ng` (run.sh does).
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np

from pipeline.errors import UserError

# English accents espeak-ng ships; they read the words as written.
ENGLISH_VOICES = (
    "en-us", "en-us-nyc", "en-gb", "en-gb-x-rp", "en-gb-scotland",
    "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
)

# Other languages speaking the English words, respelled (data_prep.commands.ACCENT_SPELLINGS) to sound like accented English
ESPEAK_ACCENTS = ("de", "nl", "sv", "es", "fr-fr", "it", "pt-br", "pl")

# Share of espeak-ng speakers drawn from the English accents; the rest speak the words with another
# language's accent (most people a deployed model hears are native English speakers).
ENGLISH_SHARE = 0.65

# Voice variants (`espeak-ng --voices=variant`, file names under voices/!v). "" is the
# voice's own default. Every variant is allowed, odd ones included: wide variation is the point.
VARIANTS = (
    "",
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "f1", "f2", "f3", "f4", "f5",
    "croak", "whisper", "whisperf", "grandma", "grandpa", "aunty",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
    "Alex", "Alicia", "Andrea", "Andy", "Annie", "AnxiousAndy", "Denis", "Diogo", "Gene", "Gene2",
    "Henrique", "Hugo", "Jacky", "Lee", "Marco", "Mario", "Michael", "Mike", "Nguyen", "Storm",
    "adam", "anika", "antonio", "belinda", "benjamin", "boris", "caleb", "david", "ed", "edward",
    "edward2", "gustave", "iven", "iven2", "iven3", "iven4", "john", "kaukovalta", "linda",
    "marcelo", "max", "michel", "miguel", "norbert", "pablo", "paul", "pedro", "quincy", "rob",
    "robert", "sandro", "shelby", "steph", "steph2", "steph3", "travis", "victor", "zac",
    # synthetic-sounding ones: few real voices sound like them, but they widen the spread of timbres
    "Demonic", "RicishayMax", "RicishayMax2", "RicishayMax3", "Tweaky", "UniRobot", "anikaRobot",
    "announcer", "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6",
    "robosoft7", "robosoft8",
)

# Bounds of an utterance's jittered speed (words per minute) and pitch (espeak-ng's 0-99 scale);
# a word too long for the 1-s window is then said faster still.
SPEED_RANGE = (110, 230)
PITCH_RANGE = (10, 90)

def find_espeak() -> str:
    """The espeak-ng executable on PATH, or a one-line UserError saying how to install it."""
    path = shutil.which("espeak-ng")
    if path is None:
        raise UserError(
            "espeak-ng not found on PATH: install it with `apt-get install espeak-ng` (Debian/Ubuntu) "
            "or `brew install espeak-ng` (macOS); it speaks the embedded spoken-commands dataset"
        )
    return path


def espeak_version(espeak: str) -> str:
    out = subprocess.run([espeak, "--version"], capture_output=True, text=True).stdout
    return out.split("Data at")[0].strip()


def installed_voices_and_variants(espeak: str) -> tuple[set[str], set[str]]:
    """(language voices, variant names) this espeak-ng installation has."""
    def listing(arg: str) -> list[list[str]]:
        out = subprocess.run([espeak, arg], capture_output=True, text=True, check=True).stdout
        return [line.split() for line in out.splitlines()[1:] if line.strip()]

    voices = {cols[1] for cols in listing("--voices")}
    # variant rows: "5 variant --/M Name !v/file"; the file name is what goes after "+"
    variants = {cols[4][len("!v/"):] for cols in listing("--voices=variant") if len(cols) >= 5}
    return voices, variants | {""}


def espeak_wav(espeak: str, text: str, voice: str, speed: int, pitch: int, pitch_range: int,
                amplitude: int) -> tuple[np.ndarray, int]:
    """Run espeak-ng once. Returns (samples: int16 [N], sample rate: 22050 for espeak-ng)."""
    # SSML only to reach the pitch range, which has no command-line flag. There is no
    # word gap (-g) to vary: each utterance is a single word.
    ssml = f'<speak><prosody range="{pitch_range}%">{text}</prosody></speak>'
    cmd = [espeak, "-v", voice, "-s", str(speed), "-p", str(pitch), "-a", str(amplitude),
           "-z", "-m", "--stdout", ssml]
    wav = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
    # espeak-ng streams to stdout, so the RIFF/data sizes in its header are placeholders
    # (0x7fffffff): read the rate from the fmt chunk and take everything after "data".
    fmt = wav.index(b"fmt ")
    rate = int.from_bytes(wav[fmt + 12:fmt + 16], "little")
    data = wav.index(b"data", fmt) + 8
    n = (len(wav) - data) // 2
    return np.frombuffer(wav, dtype="<i2", count=n, offset=data), rate
