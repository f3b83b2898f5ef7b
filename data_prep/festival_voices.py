"""Festival speaks some of the embedded commands: a second synthesiser beside espeak-ng.

A keyword spotter trained on one synthesiser learns that synthesiser (espeak-ng's formant voices); voices
built from recordings of people (Festival's diphone, cluster-unit and HTS voices) widen what "a voice" is.
Debian ships a dozen Festival voices; the ones whose speakers CMU Flite also ships are left out, so that
data_prep.flite_voices stays a set of voices never heard in training.

    text (respelled for the voice's language) --festival --pipe (one process per voice and worker, kept open;
        per utterance for FRESH_PROCESS_VOICES), Duration_Stretch--> WAV int16 at the voice's rate

Install: `apt-get install festival` and the festvox-* voice packages (run.sh installs them).
"""

from __future__ import annotations

import atexit
import select
import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

# voice -> language of its letter-to-sound rules (a key of data_prep.commands.ACCENT_SPELLINGS, "en": as written)
VOICE_LANGUAGES = {
    "kal_diphone": "en", "cmu_us_slt_arctic_hts": "en",  # HELD_OUT_VOICES: spoken only when asked for (see installed_voices)
    "ked_diphone": "en",
    "lp_diphone": "it", "pc_diphone": "it",
    "czech_dita": "cs", "czech_krb": "cs", "czech_machac": "cs", "czech_ph": "cs",
    "suo_fi_lj_diphone": "fi", "hy_fi_mv_diphone": "fi",
    "msu_ru_nsh_clunits": "ru",
    "upc_ca_ona_hts": "ca",
}
# Voices whose second utterance in a process differs from the same utterance in a fresh one: one process each.
FRESH_PROCESS_VOICES = ("czech_dita", "czech_krb", "czech_machac", "czech_ph")
# Voices whose pitch follows Festival's int_lr_params (the others' intonation ignores it): FestivalSession.say's f0_mean.
LR_INTONATION_VOICES = ("kal_diphone", "ked_diphone")
# Festival voices of speakers that Flite also has (kal, slt): never trained on, the held-out set's voices.
HELD_OUT_VOICES = ("kal_diphone", "cmu_us_slt_arctic_hts")
DEBIAN_PACKAGES = ("festival", "festvox-kdlpc16k", "festvox-italp16k", "festvox-itapc16k", "festvox-czech-dita",
                   "festvox-czech-krb", "festvox-czech-machac", "festvox-czech-ph", "festvox-suopuhe-lj",
                   "festvox-suopuhe-mv", "festvox-ru", "festvox-ca-ona-hts")


_INSTALL = ("install it with `apt-get install " + " ".join(DEBIAN_PACKAGES) + "` (Debian/Ubuntu), "
            "or generate espeak-ng voices only with `--engines espeak-ng`")


def find_festival() -> str:
    """The festival executable on PATH, or a one-line UserError saying how to install it and how to do without."""
    path = shutil.which("festival")
    if path is None:
        raise UserError(f"festival not found on PATH: {_INSTALL}")
    return path


def installed_voices(festival: str, held_out: bool = False) -> list[str]:
    """The VOICE_LANGUAGES voices this Festival installation has, in VOICE_LANGUAGES order (held_out: with the
    HELD_OUT_VOICES, first); a one-line UserError when it has none of them."""
    out = subprocess.run([festival, "--pipe"], input='(format t "%l\\n" (voice.list))\n', capture_output=True,
                         text=True, timeout=60).stdout
    have = set(out.strip().strip("()").split())
    voices = [voice for voice in VOICE_LANGUAGES if voice in have and (held_out or voice not in HELD_OUT_VOICES)]
    if not voices:
        raise UserError(f"festival has none of the generator's voices ({', '.join(VOICE_LANGUAGES)}): {_INSTALL}")
    return voices


class FestivalSession:
    """One `festival --pipe` process of one voice that says many utterances: starting Festival costs about 0.15 s,
    a word 10 ms. One voice per process: a voice leaves settings behind that change what the next voice says.
    """

    def __init__(self, festival: str, voice: str):
        if voice not in VOICE_LANGUAGES:
            raise ValueError(f"festival: unknown voice {voice!r}")
        self.voice = voice
        self._process = subprocess.Popen([festival, "--pipe"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, text=True, encoding="utf-8")
        self._count = 0

    def say(self, text: str, stretch: float, f0_mean: float | None = None) -> tuple[np.ndarray, int]:
        """The voice says text, `stretch` times its normal duration, at a mean pitch of f0_mean Hz (LR_INTONATION_VOICES;
        None: the voice's own). Returns (samples int16 [N], sample rate)."""
        if f0_mean is not None and self.voice not in LR_INTONATION_VOICES:
            raise ValueError(f"festival: voice {self.voice!r} takes no f0_mean (only {', '.join(LR_INTONATION_VOICES)})")
        if '"' in text or "\\" in text:
            raise ValueError(f"festival: unquotable text {text!r}")
        self._count += 1
        # a folder per utterance, gone when it is read: pool workers end without atexit, a session's folder would stay
        with tempfile.TemporaryDirectory(prefix="festival-") as folder:
            wav = Path(folder) / f"{self._count}.wav"
            # (voice_...) resets int_lr_params to the voice's own: the pitch set here (first in the list, so the one
            # Festival finds) holds for this utterance only
            pitch = "" if f0_mean is None else f"(set! int_lr_params (cons (list 'target_f0_mean {f0_mean:.0f}) int_lr_params))\n"
            # (fflush nil): Festival buffers its output in pipe mode; the marker line must arrive now
            self._process.stdin.write(f"(voice_{self.voice})\n{pitch}(Parameter.set 'Duration_Stretch {stretch:.3f})\n"
                                      f'(set! utt (Utterance Text "{text}"))\n(utt.synth utt)\n'
                                      f'(utt.save.wave utt "{wav}" \'riff)\n(format t "done {self._count}\\n")\n(fflush nil)\n')
            self._process.stdin.flush()
            ready, _, _ = select.select([self._process.stdout], [], [], 60)
            line = self._process.stdout.readline() if ready else ""
            if line.strip() != f"done {self._count}" or not wav.is_file():
                self.close()
                raise RuntimeError(f"festival gave no WAV for voice {self.voice!r}, text {text!r}")
            with wave.open(str(wav)) as w:
                samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
                return samples, w.getframerate()

    def alive(self) -> bool:
        return self._process.poll() is None

    def close(self) -> None:
        if self.alive():
            self._process.stdin.close()
            self._process.wait(timeout=10)


_SESSIONS: dict[tuple[str, str], FestivalSession] = {}


# Festival's diphone voices crash (SIGSEGV) on some words at some durations (lp_diphone says "no" at stretch 0.775 and
# 1.3, not at 0.78): a crashed utterance is said again this many times a hair longer or shorter, the same every run.
STRETCH_NUDGES = (1.0, 1.01, 0.99, 1.02, 0.98)


def festival_wav(festival: str, voice: str, text: str, stretch: float, f0_mean: float | None = None) -> tuple[np.ndarray, int]:
    """FestivalSession.say through this process's session of the voice (started on first use, closed at exit),
    or a session of its own for FRESH_PROCESS_VOICES: the same bytes whatever was said before. An utterance that
    crashes Festival is said at the next of STRETCH_NUDGES; RuntimeError if every one does."""
    for nudge in STRETCH_NUDGES:
        try:
            return _say(festival, voice, text, stretch * nudge, f0_mean)
        except RuntimeError as e:
            error = e
    raise RuntimeError(f"{error} at {len(STRETCH_NUDGES)} durations around stretch {stretch:.3f}")


def _say(festival: str, voice: str, text: str, stretch: float, f0_mean: float | None) -> tuple[np.ndarray, int]:
    if voice in FRESH_PROCESS_VOICES:
        session = FestivalSession(festival, voice)
        try:
            return session.say(text, stretch, f0_mean)
        finally:
            session.close()
    session = _SESSIONS.get((festival, voice))
    if session is None or not session.alive():
        session = _SESSIONS[festival, voice] = FestivalSession(festival, voice)
        atexit.register(session.close)
    return session.say(text, stretch, f0_mean)
