"""Reddit: a subreddit's listing (``/r/:subreddit/new.json``, ``after`` pagination), read
with the descriptive User-Agent Reddit's API rules require and within the limits its
``X-Ratelimit-*`` headers announce. With an OAuth token it reads ``oauth.reddit.com``."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from streams.collect.core import CollectError, HttpClient, Page, Skip, parse_json

PUBLIC = "https://www.reddit.com"
OAUTH = "https://oauth.reddit.com"
LISTINGS = ("new", "hot", "top", "rising")
# Reddit's rule: "<platform>:<app ID>:<version string> (by /u/<reddit username>)"
USER_AGENT_RULE = re.compile(r"^\S+:\S+:\S+ \(by /u/[\w-]+\)$")
REMOVED = ("[deleted]", "[removed]")


def check_user_agent(user_agent: str) -> str:
    if not USER_AGENT_RULE.match(user_agent.strip()):
        raise CollectError(
            "Reddit requires a descriptive User-Agent such as "
            "'linux:com.example.postpulse:0.1 (by /u/yourname)'; set "
            "POSTPULSE_REDDIT_USER_AGENT or pass --user-agent"
        )
    return user_agent.strip()


class RedditListing:
    """A subreddit's posts, ``limit`` per page, older pages by the listing's ``after``."""

    def __init__(
        self,
        subreddit: str,
        client: HttpClient,
        listing: str = "new",
        base: str | None = None,
        limit: int = 100,
    ) -> None:
        if listing not in LISTINGS:
            raise ValueError(f"listing must be one of {', '.join(LISTINGS)}")
        client.user_agent = check_user_agent(client.user_agent)
        self.subreddit = subreddit.removeprefix("r/").strip("/")
        self.client = client
        self.listing = listing
        self.base = (base or (OAUTH if client.token else PUBLIC)).rstrip("/")
        self.limit = limit
        self.name = f"reddit:r/{self.subreddit}:{listing}"

    def page(self, cursor: dict[str, Any]) -> Page:
        query = {"limit": str(self.limit), "raw_json": "1"}
        if cursor.get("after"):
            query["after"] = cursor["after"]
        path = f"/r/{urllib.parse.quote(self.subreddit)}/{self.listing}.json"
        doc = parse_json(
            self.client.get(f"{self.base}{path}?{urllib.parse.urlencode(query)}"), self.name
        )
        try:
            data = doc["data"]
            children = data["children"]
        except (KeyError, TypeError) as exc:
            raise CollectError(f"{self.name}: not a Listing: {exc}") from exc
        after = data.get("after")
        return Page(children, {"after": after} if after and children else None)

    def to_post(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, dict) or item.get("kind") != "t3":
            raise ValueError("a listing child must be a link object (kind t3)")
        data = item["data"]
        if data.get("removed_by_category") or (
            data.get("author") in REMOVED and data.get("selftext") in (*REMOVED, "")
        ):
            raise Skip("deleted")
        text = str(data["title"])
        if data.get("selftext"):
            text += "\n\n" + str(data["selftext"])
        return {
            "post_id": f"reddit:{data['name']}",
            "platform": "reddit",
            "author_id": str(data.get("author_fullname") or data["author"]),
            "created_at": int(float(data["created_utc"]) * 1000),
            "text": text,
            "media": listing_media(data),
            "engagement": {
                "likes": max(0, int(data.get("score") or 0)),
                "comments": int(data.get("num_comments") or 0),
                "shares": int(data.get("num_crossposts") or 0),
                "views": int(data.get("view_count") or 0),
            },
            "labels": {"subreddit": str(data.get("subreddit", self.subreddit))},
        }

    def close(self) -> None:
        return None


def listing_media(data: dict[str, Any]) -> list[dict[str, str]]:
    """An image link, a gallery's images, or a hosted video's MP4 (no sound track:
    Reddit serves audio as a separate DASH stream)."""
    video = (data.get("secure_media") or data.get("media") or {}).get("reddit_video")
    if data.get("is_video") and isinstance(video, dict) and video.get("fallback_url"):
        return [{"kind": "video", "uri": str(video["fallback_url"])}]
    if data.get("is_gallery") and isinstance(data.get("media_metadata"), dict):
        media = []
        for entry in (data.get("gallery_data") or {}).get("items", []):
            meta = data["media_metadata"].get(entry.get("media_id"), {})
            source = meta.get("s") or {}
            if meta.get("e") == "Image" and source.get("u"):
                media.append({"kind": "image", "uri": str(source["u"])})
        return media
    if data.get("post_hint") == "image" and data.get("url"):
        return [{"kind": "image", "uri": str(data["url"])}]
    return []
