"""The column path's duplicates: a number is marked when it came before, in its block or in
any block before, whatever the slots of the filter of earlier numbers (`columns._Seen`) say."""

from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from activities.recipients import columns
from activities.recipients.frames import pl

# Numbers as the ledger has them: E.164, up to 15 digits, many alike.
NUMBER = st.integers(1, 40).map(lambda n: n * 33_554_393 + 7) | st.integers(1, 10**15 - 1)


def marked(blocks: list[list[int]]) -> list[list[bool]]:
    seen = columns._Seen()
    found = []
    for numbers in blocks:
        ledger = pl.DataFrame(
            {"to_number": [f"+{n}" for n in numbers]}, schema={"to_number": pl.String}
        )
        keys = columns._keys(ledger)
        assert keys.to_list() == numbers
        within, ordered = columns._repeated(keys)
        found.append((within | seen.found(keys)).to_list())
        seen.add(keys, ordered)
    return found


def reference(blocks: list[list[int]]) -> list[list[bool]]:
    earlier: set[int] = set()
    found = []
    for numbers in blocks:
        block = []
        for number in numbers:
            block.append(number in earlier)
            earlier.add(number)
        found.append(block)
    return found


BLOCKS = st.lists(st.lists(NUMBER, max_size=30), max_size=6)


@settings(max_examples=300, deadline=None)
@given(blocks=BLOCKS)
def test_a_number_is_marked_when_it_came_before(blocks: list[list[int]]) -> None:
    assert marked(blocks) == reference(blocks)


@settings(max_examples=300, deadline=None)
@given(blocks=BLOCKS, slots=st.sampled_from([1, 2, 7, 97]))
def test_numbers_sharing_a_slot_are_told_apart(blocks: list[list[int]], slots: int) -> None:
    with mock.patch.object(columns, "_SEEN_SLOTS", slots):
        assert marked(blocks) == reference(blocks)


def test_a_repeat_far_below_and_above_every_earlier_number() -> None:
    blocks = [[5, 10**15 - 1], [10**15 - 1, 4, 5, 6], [], [1, 4, 10**15 - 2]]
    assert marked(blocks) == [[False, False], [True, False, True, False], [], [False, True, False]]
