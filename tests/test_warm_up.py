"""The validating worker's warm-up (`activities.validation.warm_up`, run by
`worker.prepare_process`): it must take the path a batch's file takes, the column path to
ledger rows, or the first batch still pays what the engine's first pass sets up."""

from activities.validation import warm_up


def test_the_warm_up_validates_every_row_of_its_file_into_the_ledger() -> None:
    tally = warm_up()

    assert (tally.rows, tally.recipients, tally.rejected, tally.skipped) == (8, 8, 0, 0)
    assert tally.segments == 8
