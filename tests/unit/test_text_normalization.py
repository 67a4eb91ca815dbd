"""The social-media text normalisation every text encoder call goes through."""

from __future__ import annotations

import pytest

from encoders.text import normalize_social
from encoders.training.data import dedup_key


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("read this https://t.co/XreEY9OicG now", "read this http now"),
        ("see www.example.com/a?b=1, then", "see http then"),
        ("thanks @HillaryClinton and @jo_2", "thanks @user and @user"),
        ("email me at a@b.org", "email me at a@b.org"),
        ("#BlackLivesMatter rally", "#Black Lives Matter rally"),
        ("#travel #MAGA #Euro2024", "#travel #MAGA #Euro 2024"),
        ("so funny 😂😂", "so funny face with tears of joy face with tears of joy"),
        ("ok 👍🏽 done", "ok thumbs up sign done"),
        ("heart ❤️", "heart heavy black heart"),
        ("go 🇵🇹!", "go flag PT !"),
        ("sooooo goooood!!!!!!", "sooo goood!!!"),
        ("Q&amp;A at 5 &gt; 4", "Q&A at 5 > 4"),
        ("tabs\tand\n\nnewlines\u200b here", "tabs and newlines here"),
        (
            "Final score 3-2 after extra time, what a match!!!",
            "Final score 3-2 after extra time, what a match!!!",
        ),
        ("", ""),
    ],
)
def test_normalize_social(raw: str, expected: str) -> None:
    assert normalize_social(raw) == expected


def test_normalize_social_is_idempotent() -> None:
    raw = "OMG @bob look https://x.io/1 #NewYorkCity 😂🇺🇸 yaaaaay &amp; more"
    once = normalize_social(raw)
    assert normalize_social(once) == once


def test_dedup_key_ignores_links_mentions_case_and_punctuation() -> None:
    a = dedup_key("Big news today!!! https://t.co/abc @alice")
    b = dedup_key("big news today https://t.co/xyz @bob")
    assert a == b
    assert a != dedup_key("big news tomorrow")
