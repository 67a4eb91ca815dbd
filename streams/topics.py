"""Topic names and how their messages are (de)serialised: raw bytes everywhere.

Posts are decoded by the validate stage, not by Faust, so that a message that is not
JSON becomes a dead letter instead of an exception inside the consumer.
"""

from __future__ import annotations

from typing import Any

import faust

from streams.settings import Settings


def all_topic_names(settings: Settings) -> list[str]:
    """Every topic postpulse reads or writes."""
    return [
        settings.topic_posts,
        settings.topic_dlq,
        settings.topic_analyses,
        settings.topic_trend_events,
        settings.topic_engagement,
        trends_changelog_topic(settings),
    ]


TRENDS_TABLE = "trends"


def trends_app_id(settings: Settings) -> str:
    """The Faust app (consumer group) of ``worker --role trends``."""
    return f"{settings.app_id}-trends"


def trends_changelog_topic(settings: Settings) -> str:
    """The Faust changelog of the trends table (what ``postpulse trends`` reads)."""
    return f"{trends_app_id(settings)}-{TRENDS_TABLE}-changelog"


def raw_topic(app: faust.App, name: str, settings: Settings) -> Any:
    """A topic of raw ``bytes`` keys and values."""
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.topic_partitions,
    )
