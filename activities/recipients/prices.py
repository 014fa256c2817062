"""A dry run's cost estimate: the messages to be sent, by the recipient's country, priced
per segment from the operator's table (`HERALD_PRICES`). A country the table has no price
for, or a number whose country is not known, is counted as unknown, never guessed."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal

import phonenumbers

from activities.recipients.frames import pl

# Named for a country that phonenumbers cannot place.
UNKNOWN = "unknown"
# +1 numbers share a calling code among some 25 countries, told apart by the area code.
NANP = "+1"


@dataclass
class Group:
    """Messages of numbers that share a country-deciding prefix, and one of the numbers."""

    sample: str
    messages: int = 0
    segments: int = 0


@dataclass
class Groups:
    """Messages to be sent, by `price_key`, counted as a file is validated."""

    by_key: dict[str, Group] = field(default_factory=dict)

    def add(self, number: str, segments: int, messages: int = 1) -> None:
        group = self.by_key.setdefault(price_key(number), Group(number))
        group.messages += messages
        group.segments += segments

    def add_frame(self, ledger: pl.DataFrame) -> None:
        """A validated block's ledger rows (`to_number`, `segments`, `skip_code`); skipped
        rows are not sent, so not priced."""
        number = pl.col("to_number")
        grouped = (
            ledger.filter(pl.col("skip_code").is_null())
            .group_by(
                pl.when(number.str.starts_with(NANP))
                .then(number.str.slice(0, 5))
                .otherwise(number.str.slice(0, 7))
                .alias("key")
            )
            .agg(
                number.first().alias("sample"),
                pl.len().alias("messages"),
                pl.col("segments").sum().alias("segments"),
            )
        )
        for _, sample, messages, segments in grouped.iter_rows():
            self.add(sample, segments, messages)


def price_key(number: str) -> str:
    """The first digits of an E.164 number that decide its country: `+1` and the area code,
    or the calling code and the digits after it (seven characters in all: enough for the
    codes that several countries share, such as +44's Guernsey, Jersey and Isle of Man)."""
    return number[:5] if number.startswith(NANP) else number[:7]


@dataclass(kw_only=True)
class CountryCost:
    country: str
    messages: int
    segments: int
    price_per_segment: float | None
    cost: float | None


@dataclass(kw_only=True)
class CostEstimate:
    currency: str
    total: float
    by_country: list[CountryCost]
    # Messages and segments without a price: their country is not known, or not in the table.
    unknown_messages: int
    unknown_segments: int


def country_of(number: str) -> str:
    """The ISO 3166 code of the number's country, or `unknown`."""
    try:
        region = phonenumbers.region_code_for_number(phonenumbers.parse(number))
    except phonenumbers.NumberParseException:
        return UNKNOWN
    return region if region and region != "ZZ" else UNKNOWN


def estimate(groups: Iterable[Group], prices: Mapping[str, float], currency: str) -> CostEstimate:
    by_country: dict[str, list[int]] = {}
    for group in groups:
        counts = by_country.setdefault(country_of(group.sample), [0, 0])
        counts[0] += group.messages
        counts[1] += group.segments
    total = Decimal(0)
    rows = []
    unknown_messages = unknown_segments = 0
    for country, (messages, segments) in sorted(by_country.items()):
        price = prices.get(country)
        cost = None
        if price is None:
            unknown_messages += messages
            unknown_segments += segments
        else:
            exact = Decimal(str(price)) * segments
            total += exact
            cost = float(exact)
        rows.append(
            CountryCost(
                country=country,
                messages=messages,
                segments=segments,
                price_per_segment=price,
                cost=cost,
            )
        )
    return CostEstimate(
        currency=currency,
        total=float(total),
        by_country=rows,
        unknown_messages=unknown_messages,
        unknown_segments=unknown_segments,
    )
