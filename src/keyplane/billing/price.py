"""One model's price and the cost arithmetic on it, in integer micro-dollars.

A :class:`Price` holds micro-dollars per 1M tokens, per image, per 1M characters or per minute (read from
the price table file by billing/prices_file.py, looked up by billing/prices.py). A token request costs, in
micro-dollars, rounded up once: (uncached input x input + cached input x cached_input + output x output) / 1M.

Realtime models bill text and audio tokens at separate rates: such an entry has ``audio_input``,
``cached_audio_input`` and ``audio_output`` beside its text rates, and a usage reported by modality
(:class:`Tokens`, a realtime ``response.done``) is priced by :meth:`Price.cost_by`. GPT image models bill an
edit's input images at ``image_input`` (their ``other_in`` tokens, at the dearest input rate). Whatever is not
attributed to a modality, and any usage reported without its details, is priced at the dearest rates,
as is every reservation: never less than the provider bills.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

MICROS = 1_000_000  # micro-dollars per dollar; also tokens per price unit (1M)


@dataclass(frozen=True, slots=True)
class Tokens:
    """A usage by modality. Cached tokens are part of the input of their modality; ``other_in`` and
    ``other_out`` are tokens the usage does not attribute to text or audio (image input, missing details):
    priced at the dearest rate; ``cached_rest`` are cached tokens it does not attribute: each is given the
    smallest discount its input could have had."""

    text_in: int = 0
    audio_in: int = 0
    other_in: int = 0
    cached_text: int = 0
    cached_audio: int = 0
    cached_rest: int = 0
    text_out: int = 0
    audio_out: int = 0
    other_out: int = 0

    @property
    def prompt(self) -> int:
        return self.text_in + self.audio_in + self.other_in

    @property
    def cached(self) -> int:
        return min(self.cached_text + self.cached_audio + self.cached_rest, self.prompt)

    @property
    def completion(self) -> int:
        return self.text_out + self.audio_out + self.other_out


@dataclass(frozen=True, slots=True)
class Price:
    """Micro-dollars: per 1M tokens (input, cached_input, output), per image, per 1M characters, per
    minute. ``tokens`` is False for an entry that prices no tokens (images, speech, transcription)."""

    input: int
    cached_input: int
    output: int
    max_output: int | None = None
    context_window: int | None = None
    images: tuple[tuple[str, str, int], ...] = ()  # (quality, size, micro-dollars per image)
    per_1m_characters: int | None = None
    per_minute: int | None = None
    tokens: bool = True
    max_seconds: int | None = None  # most seconds of audio one transcription may carry
    # Long-context tier: a request whose prompt has more than ``long_above`` tokens is billed at
    # ``long_factor`` (micro-units: 2_000_000 is twice) of these prices, its output at
    # ``long_output_factor`` (None: ``long_factor`` too).
    long_above: int | None = None
    long_factor: int = MICROS
    long_output_factor: int | None = None
    # Audio tokens (realtime models): per 1M tokens; None: the model has no separate audio rate.
    audio_input: int | None = None
    cached_audio_input: int | None = None
    audio_output: int | None = None
    # Reasons unseen (True), never (False), or by its name and request (None): proxy/estimate.py may_reason.
    reasoning: bool | None = None
    # The most input tokens one image is billed on this model, when more than limits/tokens.image_tokens knows.
    image_tokens: int | None = None
    # Image input tokens (a GPT image model's input images): per 1M tokens; None: at ``input``.
    image_input: int | None = None

    def _tier(self, prompt: int, total_in: int, total_out: int = 0) -> int:
        """The input and output totals at the rates of the request's tier (long context past ``long_above``)."""
        if self.long_above is not None and prompt > self.long_above:
            out_factor = self.long_factor if self.long_output_factor is None else self.long_output_factor
            return -(-(total_in * self.long_factor + total_out * out_factor) // MICROS)
        return total_in + total_out

    # The dearest rates (audio or text): what tokens of an unknown modality are billed at (set from the above).
    top_input: int = dataclasses.field(init=False, default=0)
    top_cached: int = dataclasses.field(init=False, default=0)
    top_output: int = dataclasses.field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "top_input", max(self.input, self.audio_input or 0, self.image_input or 0))
        object.__setattr__(self, "top_cached", max(self.cached_input, self.cached_audio_input or 0))
        object.__setattr__(self, "top_output", max(self.output, self.audio_output or 0))

    def cost(self, prompt: int, cached: int, completion: int) -> int:
        """Micro-dollars for a usage (cached tokens are part of the prompt tokens), rounded up. Its modality
        unknown, a model with audio rates bills it at the dearest ones (:meth:`cost_by` knows better)."""
        prompt, completion = max(prompt, 0), max(completion, 0)  # never less than nothing (a refund)
        cached = min(max(cached, 0), prompt)
        total_in = (prompt - cached) * self.top_input + cached * self.top_cached
        return -(-self._tier(prompt, total_in, completion * self.top_output) // MICROS)

    def cost_by(self, t: Tokens) -> tuple[int, int]:
        """(micro-dollars, their input part) for a usage by modality, each rounded up: text at the text rates,
        audio at the audio rates, the rest at the dearest (module docstring)."""
        a_in = self.audio_input if self.audio_input is not None else self.input
        a_cached = (
            self.cached_audio_input
            if self.cached_audio_input is not None
            else (self.audio_input if self.audio_input is not None else self.cached_input)
        )
        a_out = self.audio_output if self.audio_output is not None else self.output
        ct, ca = min(max(t.cached_text, 0), t.text_in), min(max(t.cached_audio, 0), t.audio_in)
        total_in = ct * self.cached_input + ca * a_cached
        # [uncached tokens, rate, cached rate] per modality; unattributed cached tokens go where their
        # discount is smallest, so that the bill is the largest the usage allows.
        pools = [
            [t.text_in - ct, self.input, self.cached_input],
            [t.audio_in - ca, a_in, a_cached],
            [t.other_in, self.top_input, self.top_cached],
        ]
        rest = max(t.cached_rest, 0)
        for pool in sorted(pools, key=lambda p: p[1] - p[2]):
            take = min(rest, max(pool[0], 0))
            pool[0] -= take
            rest -= take
            total_in += take * pool[2]
        total_in += sum(max(n, 0) * rate for n, rate, _ in pools)
        out = max(t.text_out, 0) * self.output + max(t.audio_out, 0) * a_out + max(t.other_out, 0) * self.top_output
        prompt = max(t.prompt, 0)
        cost = -(-self._tier(prompt, total_in, out) // MICROS)
        return cost, min(cost, -(-self._tier(prompt, total_in) // MICROS))

    def max_cost(self, prompt: int, max_output: int) -> int:
        """The most a request can cost: no cache hit and every allowed output token, at the dearest rates."""
        return -(-self._tier(prompt, prompt * self.top_input, max_output * self.top_output) // MICROS)

    def scaled(self, factor: int) -> Price:
        """This price times ``factor`` (micro-units), each rate rounded up (a service tier)."""

        def up(v: int) -> int:
            return -(-v * factor // MICROS)

        def up_opt(v: int | None) -> int | None:
            return None if v is None else up(v)

        return dataclasses.replace(
            self,
            input=up(self.input),
            cached_input=up(self.cached_input),
            output=up(self.output),
            audio_input=up_opt(self.audio_input),
            cached_audio_input=up_opt(self.cached_audio_input),
            audio_output=up_opt(self.audio_output),
        )
