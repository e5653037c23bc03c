"""Gateways routed to the fake upstream for every priced endpoint, on both limiter backends."""

from __future__ import annotations

from tests.billing.conftest import _sweep_redis_prefixes, backend, make_gateway  # noqa: F401

# Images, speech, transcription and moderation models, served by the fake upstream.
MEDIA = (
    '\n[[upstreams]]\nname = "media"\nbase_url = "{url}"\napi_key_env = "KP_BILLING_TEST_UPSTREAM_KEY"\n'
    'models = ["dall-e-*", "gpt-image-*", "tts-*", "whisper-*", "omni-moderation-*"]\n'
)


def media(fake) -> str:  # type: ignore[no-untyped-def]
    return MEDIA.format(url=fake.base_url)
