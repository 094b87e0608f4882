"""Tokens -> text as ESPnet's tokenizers join them (char, word, SentencePiece bpe)."""
import os
from typing import List, Optional

SPACE = "<space>"  # ESPnet's CharTokenizer space symbol


class Tokenizer:
    """``tokens2text`` of ESPnet's tokenizer for ``token_type``; ``bpemodel`` relative to ``model_dir``."""

    def __init__(self, token_type: str, model_dir: str, bpemodel: Optional[str] = None):
        if token_type not in ("char", "word", "bpe"):
            raise ValueError(f"tokenizer.token_type: {token_type!r} is not supported (char, word, bpe)")
        self.token_type = token_type
        self.sp = None
        if token_type == "bpe":
            import sentencepiece

            path = os.path.join(model_dir, bpemodel or "")
            if not bpemodel or not os.path.isfile(path):
                raise FileNotFoundError(f"tokenizer.bpemodel: {path} not found (token_type: bpe needs it)")
            self.sp = sentencepiece.SentencePieceProcessor(model_file=path)

    def tokens2text(self, tokens: List[str]) -> str:
        if self.token_type == "char":
            return "".join(" " if t == SPACE else t for t in tokens)
        if self.token_type == "word":
            return " ".join(tokens)
        return self.sp.decode_pieces(list(tokens))
