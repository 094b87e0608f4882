"""How many frames a sound file's header declares, to tell a truncated file from a short one.

libsndfile reports the header's count for most formats (FLAC: STREAMINFO's total samples), but
for RIFF/WAVE it silently shrinks the count to what the file holds when the ``data`` chunk is
cut short.  So WAV headers are read here; for any other format libsndfile's count is used.

Streaming writers (sox, ffmpeg writing to a pipe) that cannot know the length write 0 or a
placeholder near 2**32 as the size of the data chunk; such a size declares nothing.
"""
import struct
from typing import BinaryIO, Optional

# data chunk sizes that streaming writers use for "unknown" (no real utterance is 2 GiB)
_PLACEHOLDER_SIZE = 0x7FFF0000


def declared_wav_frames(f: BinaryIO) -> Optional[int]:
    """Frames declared by the ``data`` chunk of a RIFF/WAVE stream (None: not a RIFF/WAVE
    stream, or a size that declares nothing).  ``f`` is read from its start and left at its start."""
    f.seek(0)
    try:
        riff = f.read(12)
        if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            chunk, size = head[:4], struct.unpack("<I", head[4:])[0]
            if chunk == b"fmt ":
                fmt = f.read(size + (size & 1))
                if len(fmt) < 14:
                    return None
                block_align = struct.unpack("<H", fmt[12:14])[0]
            elif chunk == b"data":
                if not block_align or size == 0 or size >= _PLACEHOLDER_SIZE:
                    return None
                return size // block_align
            else:
                f.seek(size + (size & 1), 1)
    finally:
        f.seek(0)


def declared_frames(wav_frames: Optional[int], libsndfile_frames: int) -> Optional[int]:
    """The header's frame count: a WAV header's (:func:`declared_wav_frames`), else
    libsndfile's count (None when neither declares one)."""
    if wav_frames is not None:
        return wav_frames
    if 0 < libsndfile_frames < 2**62:  # libsndfile: 0 or SF_COUNT_MAX when unknown
        return libsndfile_frames
    return None
