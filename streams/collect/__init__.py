"""Collecting posts from platform APIs and allowed sites (``postpulse collect``).

A source yields pages of items and a resumable cursor; :func:`collect` maps items to
:class:`~streams.records.Post` records, delivers each post once, sends later engagement
counts to the engagement output, dead-letters malformed items with the reason, and
saves the cursor after every page. Sources: Mastodon timelines and streaming API,
Bluesky Jetstream and author feeds, Reddit subreddit listings, and a polite crawler of
pages that publish structured data.
"""

from streams.collect.core import (
    CollectError,
    CollectResult,
    CollectState,
    HttpClient,
    ListOutputs,
    Outputs,
    Page,
    Rejected,
    Skip,
    Source,
    collect,
    next_link,
    redact,
    reset_wait,
    retry_after,
)
from streams.collect.mastodon import MastodonStream, MastodonTimeline, html_to_text

__all__ = [
    "CollectError",
    "CollectResult",
    "CollectState",
    "HttpClient",
    "ListOutputs",
    "MastodonStream",
    "MastodonTimeline",
    "Outputs",
    "Page",
    "Rejected",
    "Skip",
    "Source",
    "collect",
    "html_to_text",
    "next_link",
    "redact",
    "reset_wait",
    "retry_after",
]
