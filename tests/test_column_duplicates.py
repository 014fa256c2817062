"""The column path's duplicates: a number is marked when it came before, in its block or in
any block before (`columns._repeated`: a block's thread checks it against the blocks given
and those still being validated, `columns.frame_blocks`). The column path against the row
path, block sizes and threads included, is in tests/test_recipient_table.py."""

from hypothesis import given, settings
from hypothesis import strategies as st

from activities.recipients import columns
from activities.recipients.frames import pl

# Numbers as the ledger has them: E.164, up to 15 digits, many alike.
NUMBER = st.integers(1, 40).map(lambda n: n * 1_000_003 + 7) | st.integers(1, 10**15 - 1)


def marked(blocks: list[list[int]]) -> list[list[bool]]:
    """Each block checked against the blocks before it."""
    before: list[pl.Series] = []
    found = []
    for numbers in blocks:
        ledger = pl.DataFrame(
            {"to_number": [f"+{n}" for n in numbers]}, schema={"to_number": pl.String}
        )
        keys = columns._keys(ledger)
        assert keys.to_list() == numbers
        found.append(columns._repeated(keys, before).to_list())
        before.append(keys)
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


@settings(max_examples=400, deadline=None)
@given(blocks=st.lists(st.lists(NUMBER, max_size=30), max_size=6))
def test_a_number_is_marked_when_it_came_before(blocks: list[list[int]]) -> None:
    assert marked(blocks) == reference(blocks)


def test_a_repeat_far_below_and_above_every_earlier_number() -> None:
    blocks = [[5, 10**15 - 1], [10**15 - 1, 4, 5, 6], [], [1, 4, 10**15 - 2]]
    want = [[False, False], [True, False, True, False], [], [False, True, False]]
    assert marked(blocks) == want
