#!/usr/bin/env python3
"""Synthesise an English ASR corpus offline (Kaldi-style data dirs) for the synth_en recipe.

Called by local/data.sh from the recipe directory.  Writes data/<split>/{wav.scp,text,utt2spk,spk2utt}
and 16 kHz mono 16-bit wavs under --datadir/<split>/.

Splits
  train, dev           training voices, mild augmentation
  test_seen            held-out sentences, training voices, train augmentation
  test_unseen_voice    held-out sentences, voices/engines never used in training, train augmentation
  test_noisy           held-out sentences, training voices, 5-15 dB SNR + telephone band and/or reverb
  test_tempo           held-out sentences, training voices, tempo 0.75 or 1.3 (train range is 0.9-1.1)
  test_real            the 10 transcribed real recordings of Debian pocketsphinx-testdata

The synthetic test splits share one list of held-out sentences (paired comparison: only the voice /
condition changes between them); dev and the test sentences never occur in train.
"""

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import wave
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import synth_text  # noqa: E402

SR = 16000
SPLITS = ["train", "dev", "test_seen", "test_unseen_voice", "test_noisy", "test_tempo", "test_real"]
SPLIT_CODE = {"train": "tr", "dev": "dv", "test_seen": "ts", "test_unseen_voice": "tu",
              "test_noisy": "tn", "test_tempo": "tt"}

FESTIVAL_VOICES_DIR = os.environ.get("SYNTH_EN_FESTIVAL_VOICES_DIR", "/usr/share/festival/voices")
PS_DIR = os.environ.get("SYNTH_EN_PS_DIR", "/usr/share/pocketsphinx/test/data")

# ---------------------------------------------------------------------------------------------
# Voices
# ---------------------------------------------------------------------------------------------
ESPEAK_TRAIN_ACCENTS = ["en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-us-nyc"]
ESPEAK_UNSEEN_ACCENTS = ["en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]
# espeak-ng voice variants (!v/...).  Left out: f1, linda, Andy (measured 80-90 % WER, DATA.md),
# and, by listening judgement only, the whispered / robotic / effect variants (AnxiousAndy, whisper,
# whisperf, croak, Demonic, robosoft*, UniRobot, anikaRobot, Tweaky, RicishayMax*, Storm, fast,
# "Mr serious").
ESPEAK_VARIANTS = [
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6",
    "adam", "Alex", "Alicia", "Andrea", "Annie", "announcer", "antonio", "aunty", "belinda",
    "benjamin", "boris", "caleb", "david", "Denis", "Diogo", "ed", "edward", "edward2", "Gene",
    "Gene2", "grandma", "grandpa", "gustave", "Henrique", "Hugo", "iven", "iven2", "iven3", "iven4",
    "Jacky", "john", "kaukovalta", "Lee", "marcelo", "Marco", "Mario", "max", "Michael", "michel",
    "miguel", "Mike", "Nguyen", "norbert", "pablo", "paul", "pedro", "quincy", "rob", "robert",
    "sandro", "shelby", "steph", "steph2", "steph3", "travis", "victor", "zac", "anika",
]
FLITE_TRAIN = ["kal16", "rms", "awb"]
FLITE_UNSEEN = ["slt"]
# festival is held out completely (its kal voice is the same speaker as flite kal16, so unused)
FESTIVAL_UNSEEN = {"ked": ("voice_ked_diphone", "english/ked_diphone", "festvox-kdlpc16k"),
                   "slt-hts": ("voice_cmu_us_slt_arctic_hts", "us/cmu_us_slt_arctic_hts",
                               "festvox-us-slt-hts")}
# share of utterances per voice group (within a group voices are uniform)
TRAIN_GROUPS = [("espeak", 0.66), ("flite-kal16", 0.14), ("flite-rms", 0.10), ("flite-awb", 0.10)]
UNSEEN_GROUPS = [("espeak", 0.40), ("flite-slt", 0.20), ("festival-ked", 0.20),
                 ("festival-slt-hts", 0.20)]


def _variant_ids(variants):
    """Speaker-id spelling of variant names: lower case; a name that is a prefix of another one
    gets a '0' so that no speaker id is a prefix of another (Kaldi sort-order consistency)."""
    low = [v.lower() for v in variants]
    out = {}
    for v, lv in zip(variants, low):
        out[v] = lv + "0" if any(o != lv and o.startswith(lv) for o in low) else lv
    return out


class Voice:
    def __init__(self, spk, engine, name, pitch=None, fest_cmd=None):
        self.spk, self.engine, self.name, self.pitch, self.fest_cmd = spk, engine, name, pitch, fest_cmd

    def as_dict(self):
        return {"spk": self.spk, "engine": self.engine, "name": self.name, "pitch": self.pitch,
                "fest_cmd": self.fest_cmd}


def _espeak_voices(accents, variants):
    ids = _variant_ids(variants)
    out = []
    for acc in accents:
        for v in variants:
            spk = f"espeak-{acc}-{ids[v]}"
            pitch = 35 + zlib.crc32(spk.encode()) % 31  # fixed per speaker, 35..65
            out.append(Voice(spk, "espeak", f"{acc}+{v}", pitch=pitch))
    return out


def build_voice_groups(espeak_variants):
    train = {"espeak": _espeak_voices(ESPEAK_TRAIN_ACCENTS, espeak_variants)}
    for v in FLITE_TRAIN:
        train[f"flite-{v}"] = [Voice(f"flite-{v}", "flite", v)]
    unseen = {"espeak": _espeak_voices(ESPEAK_UNSEEN_ACCENTS, espeak_variants)}
    for v in FLITE_UNSEEN:
        unseen[f"flite-{v}"] = [Voice(f"flite-{v}", "flite", v)]
    for v, (cmd, _, _) in FESTIVAL_UNSEEN.items():
        unseen[f"festival-{v}"] = [Voice(f"festival-{v}", "festival", v, fest_cmd=cmd)]
    return train, unseen


# ---------------------------------------------------------------------------------------------
# Dependency check
# ---------------------------------------------------------------------------------------------
def check_dependencies():
    missing = []  # (what, debian package)
    for prog, pkg in [("espeak-ng", "espeak-ng"), ("flite", "flite"), ("festival", "festival"),
                      ("sox", "sox")]:
        if os.environ.get("SYNTH_EN_PRETEND_MISSING", "") == prog or shutil.which(prog) is None:
            missing.append((f"program '{prog}' (not found in PATH)", pkg))
    if shutil.which("festival"):
        for _, (_, sub, pkg) in FESTIVAL_UNSEEN.items():
            if not os.path.isdir(os.path.join(FESTIVAL_VOICES_DIR, sub)):
                missing.append((f"festival voice {os.path.join(FESTIVAL_VOICES_DIR, sub)}", pkg))
    if shutil.which("flite"):
        res = subprocess.run(["flite", "-lv"], capture_output=True, text=True)
        have = set((res.stdout + res.stderr).replace("Voices available:", "").split())
        for v in FLITE_TRAIN + FLITE_UNSEEN:
            if v not in have:
                missing.append((f"flite voice '{v}'", "flite"))
    for what, pkg in synth_text.text_sources_present():
        missing.append((f"text file {what}", pkg))
    for sub in ("librivox/transcription", "cards/cards.transcription"):
        p = os.path.join(PS_DIR, sub)
        if not os.path.isfile(p):
            missing.append((f"real recordings {p}", "pocketsphinx-testdata"))
    try:
        import numpy  # noqa: F401
    except ImportError:
        missing.append((f"python module numpy for {sys.executable}", None))
    if missing:
        sys.stderr.write("ERROR: local/data.sh (synth_en): missing requirement(s):\n")
        for what, pkg in missing:
            sys.stderr.write(f"  - {what}" + (f"  [Debian package {pkg}]\n" if pkg else "\n"))
        pkgs = sorted({p for _, p in missing if p})
        if pkgs:
            sys.stderr.write("Fix with:\n  sudo apt-get install -y " + " ".join(pkgs) + "\n")
        if any(p is None for _, p in missing):
            sys.stderr.write(f"  {sys.executable} -m pip install numpy\n"
                             "  (or set PYTHON=/path/to/python that has numpy)\n")
        sys.exit(2)


def available_espeak_variants():
    res = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True)
    have = set()
    for line in res.stdout.splitlines()[1:]:
        m = re.search(r"!v/(\S+)", line)
        if m:
            have.add(m.group(1))
    vs = [v for v in ESPEAK_VARIANTS if v in have]
    if len(vs) < len(ESPEAK_VARIANTS):
        sys.stderr.write("WARNING: espeak-ng variants not installed, skipped: "
                         + " ".join(v for v in ESPEAK_VARIANTS if v not in have) + "\n")
    if not vs:
        sys.stderr.write("ERROR: espeak-ng lists no usable voice variants; "
                         "fix with: sudo apt-get install -y --reinstall espeak-ng-data\n")
        sys.exit(2)
    return vs


# ---------------------------------------------------------------------------------------------
# Augmentation plans
# ---------------------------------------------------------------------------------------------
NOISE_COLORS = ["white", "pink", "brown"]


def aug_train(rng):
    a = {"tempo": round(rng.uniform(0.9, 1.1), 3),
         "snr": round(rng.uniform(15.0, 35.0), 1),
         "color": rng.choice(NOISE_COLORS),
         "tel": rng.random() < 0.10,
         "reverb": None,
         "gain_db": round(rng.uniform(-12.0, -1.0), 1)}
    if rng.random() < 0.15:
        a["reverb"] = [rng.randint(20, 60), rng.randint(30, 70), rng.randint(30, 80),
                       rng.randint(0, 20)]
    return a


def aug_noisy(rng):
    a = aug_train(rng)
    a["snr"] = round(rng.uniform(5.0, 15.0), 1)
    tel = rng.random() < 0.5
    rev = rng.random() < 0.5
    if not (tel or rev):
        tel, rev = (True, False) if rng.random() < 0.5 else (False, True)
    a["tel"] = tel
    a["reverb"] = ([rng.randint(60, 95), rng.randint(20, 60), rng.randint(70, 100),
                    rng.randint(10, 40)] if rev else None)
    return a


def aug_tempo(rng):
    a = aug_train(rng)
    a["tempo"] = rng.choice([0.75, 1.3])
    return a


def pick_voice(rng, groups, weights):
    names = [g for g, _ in weights]
    g = rng.choices(names, weights=[w for _, w in weights])[0]
    return rng.choice(groups[g])


def make_item(split, idx, text, voice, aug, seed, wavdir):
    uttid = f"{voice.spk}_{SPLIT_CODE[split]}{idx:06d}"
    it = {"split": split, "idx": idx, "uttid": uttid, "text": text,
          "wav": os.path.join(wavdir, split, uttid + ".wav"),
          "noise_seed": [seed & 0xFFFFFFFF, zlib.crc32(split.encode()), idx]}
    it.update(voice.as_dict())
    it.update(aug)
    return it


# ---------------------------------------------------------------------------------------------
# Synthesis (worker side)
# ---------------------------------------------------------------------------------------------
RAW_F32 = ["-t", "raw", "-e", "floating-point", "-b", "32", "-c", "1", "-r", str(SR)]


def _sox_effects(it):
    eff = ["rate", str(SR)]
    if abs(it["tempo"] - 1.0) > 1e-6:
        eff += ["tempo", "-s", str(it["tempo"])]
    if it["reverb"]:
        rv, hf, room, pre = it["reverb"]
        eff += ["vol", "0.5", "pad", "0", "0.3", "reverb", str(rv), str(hf), str(room), "100", str(pre)]
    eff += ["channels", "1"]
    return eff


def _synth_to_float(it, src_wav=None):
    """Run the engine (unless src_wav given) and sox stage A; return float32 samples at 16 kHz."""
    import numpy as np

    sox = ["sox", "-q", "-V1"]
    spoken = it["text"].lower()
    if it["engine"] == "espeak":
        p1 = subprocess.Popen(["espeak-ng", "-v", it["name"], "-p", str(it["pitch"]), "--stdout",
                               spoken], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        p2 = subprocess.run(sox + ["-t", "wav", "-"] + RAW_F32 + ["-"] + _sox_effects(it),
                            stdin=p1.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        p1.stdout.close()
        rc1 = p1.wait()
        if rc1 != 0 or p2.returncode != 0:
            raise RuntimeError(f"espeak-ng/sox failed for {it['uttid']}: {p2.stderr.decode()[-300:]}")
        out = p2.stdout
    else:
        if src_wav is None:  # flite
            src_wav = it["_tmp"]
            r = subprocess.run(["flite", "-voice", it["name"], "-t", spoken, "-o", src_wav],
                               capture_output=True)
            if r.returncode != 0:
                raise RuntimeError(f"flite failed for {it['uttid']}: {r.stderr.decode()[-300:]}")
        r = subprocess.run(sox + [src_wav] + RAW_F32 + ["-"] + _sox_effects(it), capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"sox failed for {it['uttid']}: {r.stderr.decode()[-300:]}")
        out = r.stdout
    return np.frombuffer(out, dtype=np.float32).copy()


def _colored_noise(rng, n, color):
    import numpy as np

    if color == "white" or n < 4:
        return rng.standard_normal(n)
    nfft = 1 << (n - 1).bit_length()  # power of two: fast FFT whatever the length
    spec = np.fft.rfft(rng.standard_normal(nfft))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    spec /= np.sqrt(f) if color == "pink" else f
    x = np.fft.irfft(spec, nfft)[:n]
    return x - x.mean()


def _active_power(x):
    import numpy as np

    frame = 400
    nfr = len(x) // frame
    if nfr == 0:
        return float(np.mean(x ** 2) + 1e-12)
    e = np.mean(x[: nfr * frame].reshape(nfr, frame) ** 2, axis=1)
    act = e[e > e.max() * 1e-4]
    return float(act.mean()) if len(act) else float(e.mean() + 1e-12)


def _finish(it, x):
    """Add noise, optional telephone band, level; write 16-bit wav; return duration (s)."""
    import numpy as np

    if len(x) == 0:
        raise RuntimeError(f"empty audio for {it['uttid']}")
    rng = np.random.default_rng(it["noise_seed"])
    if it.get("snr") is not None:
        noise = _colored_noise(rng, len(x), it["color"])
        p_n = float(np.mean(noise ** 2)) + 1e-12
        x = x + noise * math.sqrt(_active_power(x) / (10.0 ** (it["snr"] / 10.0)) / p_n)
    if it.get("tel"):
        r = subprocess.run(["sox", "-q", "-V1"] + RAW_F32 + ["-"] + RAW_F32 + ["-", "sinc", "300-3400"],
                           input=x.astype(np.float32).tobytes(), capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"sox telephone band failed for {it['uttid']}: {r.stderr.decode()}")
        x = np.frombuffer(r.stdout, dtype=np.float32).astype(np.float64)
    peak = float(np.max(np.abs(x))) + 1e-9
    x = x * (10.0 ** (it.get("gain_db", -3.0) / 20.0) / peak)
    pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")
    write_wav(it["wav"], pcm.tobytes())
    return len(pcm) / SR


def write_wav(path, pcm_bytes):
    tmp = path + ".part"
    with wave.open(tmp, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm_bytes)
    os.replace(tmp, path)


def _festival_batch(items, tmpdir):
    cmd = items[0]["fest_cmd"]
    lines = [f"({cmd})"]
    for k, it in enumerate(items):
        it["_tmp"] = os.path.join(tmpdir, f"f{k}.wav")
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{it["text"].lower()}")) '
                     f'"{it["_tmp"]}" \'riff)')
    script = os.path.join(tmpdir, "batch.scm")
    with open(script, "w") as f:
        f.write("\n".join(lines) + "\n")
    r = subprocess.run(["festival", "-b", script], capture_output=True)
    bad = [it["uttid"] for it in items if not os.path.isfile(it["_tmp"])]
    if r.returncode != 0 or bad:
        raise RuntimeError(f"festival failed ({cmd}) for {bad[:3]}: {r.stderr.decode()[-300:]}")


def run_chunk(items):
    tmpdir = tempfile.mkdtemp(prefix="synth_en_")
    try:
        if items[0]["engine"] == "festival":
            _festival_batch(items, tmpdir)
        out = []
        for k, it in enumerate(items):
            if it["engine"] == "flite":
                it["_tmp"] = os.path.join(tmpdir, f"l{k}.wav")
            x = _synth_to_float(it, src_wav=it["_tmp"] if it["engine"] == "festival" else None)
            out.append((it["split"], it["idx"], _finish(it, x)))
        return out
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def chunk_items(items, size):
    """Chunks of at most ``size`` items; festival items are grouped by voice (one process each)."""
    fest, other = {}, []
    for it in items:
        if it["engine"] == "festival":
            fest.setdefault(it["name"], []).append(it)
        else:
            other.append(it)
    chunks = [other[i:i + size] for i in range(0, len(other), size)]
    for _, lst in sorted(fest.items()):
        fsize = max(size, 25)
        chunks += [lst[i:i + fsize] for i in range(0, len(lst), fsize)]
    # festival chunks are slow (HTS): start them first
    chunks.sort(key=lambda c: c[0]["engine"] != "festival")
    return chunks


def synthesize(pool, items, chunk_size=16):
    durs = {}
    for res in pool.imap_unordered(run_chunk, chunk_items(items, chunk_size)):
        for split, idx, d in res:
            durs[(split, idx)] = d
    return [durs[(it["split"], it["idx"])] for it in items]


# ---------------------------------------------------------------------------------------------
# Data dirs
# ---------------------------------------------------------------------------------------------
def write_datadir(split, entries):
    """entries: list of (uttid, spk, abs wav path, transcript)."""
    d = os.path.join("data", split)
    os.makedirs(d, exist_ok=True)
    entries = sorted(entries)
    with open(os.path.join(d, "wav.scp"), "w") as f:
        f.writelines(f"{u} {w}\n" for u, _, w, _ in entries)
    with open(os.path.join(d, "text"), "w") as f:
        f.writelines(f"{u} {t}\n" for u, _, _, t in entries)
    with open(os.path.join(d, "utt2spk"), "w") as f:
        f.writelines(f"{u} {s}\n" for u, s, _, _ in entries)
    spk2utt = {}
    for u, s, _, _ in entries:
        spk2utt.setdefault(s, []).append(u)
    with open(os.path.join(d, "spk2utt"), "w") as f:
        f.writelines(f"{s} {' '.join(us)}\n" for s, us in sorted(spk2utt.items()))


def real_entries(wavdir):
    entries = []
    os.makedirs(os.path.join(wavdir, "test_real"), exist_ok=True)
    for sub, trans, spk in [("librivox", "transcription", "ps-librivox"),
                            ("cards", "cards.transcription", "ps-cards")]:
        with open(os.path.join(PS_DIR, sub, trans)) as f:
            for line in f:
                m = re.match(r"^(.*)\(([^()]+)\)\s*$", line.strip())
                if not m:
                    continue
                words, fid = m.group(1), m.group(2)
                words = re.sub(r"</?s>", " ", words)
                norm = synth_text.normalize(words, min_words=1, max_words=10 ** 6)
                src = os.path.join(PS_DIR, sub, fid + ".wav")
                if norm is None or not os.path.isfile(src):
                    sys.stderr.write(f"WARNING: test_real: skipped {fid}\n")
                    continue
                tag = fid.rsplit("-", 1)[-1] if sub == "librivox" else fid
                uttid = f"{spk}_{tag}"
                dst = os.path.join(wavdir, "test_real", uttid + ".wav")
                r = subprocess.run(["sox", "-q", "-V1", src, "-r", str(SR), "-c", "1", "-b", "16",
                                    "-e", "signed-integer", dst], capture_output=True)
                if r.returncode != 0:
                    raise RuntimeError(f"sox failed on {src}: {r.stderr.decode()}")
                entries.append((uttid, spk, dst, norm))
    return entries


def wav_duration(path):
    with wave.open(path, "rb") as w:
        return w.getnframes() / w.getframerate()


def summary(dur_by_split):
    print("synth_en corpus summary:")
    print(f"  {'split':<18} {'utts':>7} {'hours':>8} {'spk':>5}")
    for split in SPLITS:
        d = dur_by_split.get(split)
        if d is None:
            continue
        n, sec, nspk = d
        print(f"  {split:<18} {n:>7d} {sec / 3600.0:>8.3f} {nspk:>5d}")


def summary_from_dirs():
    out = {}
    for split in SPLITS:
        wavs = read_wav_scp(split)
        spk = {l.split()[1] for l in open(os.path.join("data", split, "utt2spk"))}
        out[split] = (len(wavs), sum(wav_duration(p) for p in wavs.values()), len(spk))
    return out


def read_wav_scp(split):
    with open(os.path.join("data", split, "wav.scp")) as f:
        return dict(l.rstrip("\n").split(" ", 1) for l in f if l.strip())


# ---------------------------------------------------------------------------------------------
def at_least(kind, low, strict=False):
    """An argparse type: ``kind`` (int or float) >= low (> low with ``strict``), said in its error."""
    def convert(text):
        value = kind(text)  # ValueError: argparse says "invalid <name> value"
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return value
    convert.__name__ = kind.__name__
    return convert


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_hours", type=at_least(float, 0, strict=True), default=4.0)
    p.add_argument("--dev_utts", type=at_least(int, 1), default=300)
    p.add_argument("--test_utts", type=at_least(int, 1), default=200, help="utterances per synthetic test split")
    p.add_argument("--top_words", type=at_least(int, 0), default=1000,
                   help="keep sentences whose words are all among the N most frequent (0: all)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--nj", type=at_least(int, 1), default=2)
    p.add_argument("--datadir", default="downloads/synth_en", help="where the wavs go")
    p.add_argument("--force", action="store_true", help="regenerate even if a matching run is done")
    return p


def parse_args(argv):
    return build_parser().parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t0 = time.time()
    check_dependencies()
    wavdir = os.path.abspath(args.datadir)
    if re.search(r"\s", wavdir):
        sys.stderr.write(f"ERROR: --datadir must not contain white space (wav.scp): {wavdir}\n")
        return 1
    opts = {k: getattr(args, k) for k in ("train_hours", "dev_utts", "test_utts", "top_words", "seed")}
    opts["version"] = 1
    stamp = os.path.join(wavdir, "synth_en.done")
    if not args.force and os.path.isfile(stamp):
        try:
            same = json.load(open(stamp)) == opts
            complete = same and all(
                all(os.path.isfile(p) for p in read_wav_scp(s).values()) for s in SPLITS)
        except (OSError, ValueError):
            complete = False
        if complete:
            print(f"synth_en: {wavdir} already holds a complete corpus for these options "
                  "(skipping; use --force to regenerate)")
            summary(summary_from_dirs())
            return 0
    if os.path.isfile(stamp):
        os.remove(stamp)

    sents = synth_text.load_sentences(args.top_words)
    rng = random.Random(args.seed)
    order = list(sents)
    rng.shuffle(order)
    n_test, n_dev = args.test_utts, args.dev_utts
    test_sents = order[:n_test]
    dev_sents = order[n_test:n_test + n_dev]
    train_sents = order[n_test + n_dev:]
    if len(test_sents) < n_test or len(dev_sents) < n_dev or not train_sents:
        sys.stderr.write(f"ERROR: only {len(sents)} sentences with --top_words {args.top_words}; "
                         f"need more than --test_utts + --dev_utts = {n_test + n_dev}\n")
        return 1
    print(f"synth_en: {len(sents)} sentences (top_words={args.top_words}): train pool "
          f"{len(train_sents)}, dev {len(dev_sents)}, test {len(test_sents)}", flush=True)

    variants = available_espeak_variants()
    train_groups, unseen_groups = build_voice_groups(variants)
    all_spk = [v.spk for g in list(train_groups.values()) + list(unseen_groups.values()) for v in g]
    assert len(set(all_spk)) == len(all_spk)
    assert not any(a != b and b.startswith(a) and b[len(a)] < "_" for a in all_spk for b in all_spk)

    for split in SPLITS:
        d = os.path.join(wavdir, split)
        if os.path.isdir(d):
            for fn in os.listdir(d):
                if fn.endswith((".wav", ".wav.part")):
                    os.remove(os.path.join(d, fn))
        os.makedirs(d, exist_ok=True)
        if os.path.isdir(os.path.join("data", split)):
            shutil.rmtree(os.path.join("data", split))

    def plan(split, sentences, groups, weights, augf):
        r = random.Random(f"{args.seed}-{split}")
        return [make_item(split, i, s, pick_voice(r, groups, weights), augf(r), args.seed, wavdir)
                for i, s in enumerate(sentences)]

    fixed = plan("dev", dev_sents, train_groups, TRAIN_GROUPS, aug_train)
    fixed += plan("test_seen", test_sents, train_groups, TRAIN_GROUPS, aug_train)
    fixed += plan("test_unseen_voice", test_sents, unseen_groups, UNSEEN_GROUPS, aug_train)
    fixed += plan("test_noisy", test_sents, train_groups, TRAIN_GROUPS, aug_noisy)
    fixed += plan("test_tempo", test_sents, train_groups, TRAIN_GROUPS, aug_tempo)

    def train_stream():
        r = random.Random(f"{args.seed}-train")
        i, epoch = 0, 0
        while True:
            perm = list(train_sents)
            random.Random(f"{args.seed}-train-epoch{epoch}").shuffle(perm)
            for s in perm:
                yield make_item("train", i, s, pick_voice(r, train_groups, TRAIN_GROUPS),
                                aug_train(r), args.seed, wavdir)
                i += 1
            epoch += 1

    results = {s: [] for s in SPLITS if s != "test_real"}  # split -> list of (item, dur)
    ctx = mp.get_context("fork")
    with ctx.Pool(args.nj) as pool:
        t1 = time.time()
        durs = synthesize(pool, fixed)
        for it, d in zip(fixed, durs):
            results[it["split"]].append((it, d))
        t_fixed = time.time() - t1
        print(f"synth_en: dev + test splits: {len(fixed)} utts, {sum(durs) / 3600:.3f} h in "
              f"{t_fixed:.1f} s ({sum(durs) / max(t_fixed, 1e-9):.0f}x real time)", flush=True)
        t2 = time.time()
        # train: synthesise in rounds until the requested duration is reached (deterministic:
        # items come from a seeded stream and durations do not depend on scheduling)
        target = args.train_hours * 3600.0
        stream = train_stream()
        got, train = 0.0, []
        avg = 2.6  # initial guess of seconds per utterance
        while got < target:
            need = max(1, math.ceil((target - got) / avg * (0.97 if not train else 1.0)))
            batch = [next(stream) for _ in range(need)]
            for it, d in zip(batch, synthesize(pool, batch)):
                if got >= target:
                    break  # the rest of the batch is not needed
                train.append((it, d))
                got += d
            avg = got / max(1, len(train))
        # drop wavs of synthesised-but-unused train items
        used = {it["uttid"] for it, _ in train}
        for fn in os.listdir(os.path.join(wavdir, "train")):
            if fn.endswith(".wav") and fn[:-4] not in used:
                os.remove(os.path.join(wavdir, "train", fn))
        results["train"] = train
        t_train = time.time() - t2
        print(f"synth_en: train: {len(train)} utts, {got / 3600:.3f} h in {t_train:.1f} s "
              f"({len(train) / max(t_train, 1e-9):.1f} utt/s, {got / max(t_train, 1e-9):.0f}x real time)",
              flush=True)
        t_synth = time.time() - t1

    summ = {}
    for split, lst in results.items():
        write_datadir(split, [(it["uttid"], it["spk"], it["wav"], it["text"]) for it, _ in lst])
        summ[split] = (len(lst), sum(d for _, d in lst), len({it["spk"] for it, _ in lst}))
    real = real_entries(wavdir)
    write_datadir("test_real", real)
    summ["test_real"] = (len(real), sum(wav_duration(w) for _, _, w, _ in real),
                         len({s for _, s, _, _ in real}))
    with open(stamp, "w") as f:
        json.dump(opts, f)
    synth_sec = sum(v[1] for k, v in summ.items() if k != "test_real")
    n_synth = sum(v[0] for k, v in summ.items() if k != "test_real")
    summary(summ)
    print(f"synthesised {n_synth} utts / {synth_sec / 3600:.3f} h in {t_synth:.1f} s "
          f"({n_synth / max(t_synth, 1e-9):.1f} utt/s, {synth_sec / max(t_synth, 1e-9):.0f}x real time, "
          f"nj={args.nj}); total {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
