"""A small run of `make bench`'s harness, so it cannot rot: its own stack, every stage, the
results file and the chart."""

import json
import subprocess
import sys
from pathlib import Path

from bench.ledger_copy import VARIANTS


def bench(*args: str, module: str = "bench") -> subprocess.CompletedProcess[str]:
    """`python -m bench` (or one of its harnesses, `module`) with `args`, on a stack of its own."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_bench_harness_runs_every_stage_and_writes_its_results(tmp_path: Path) -> None:
    run = bench(
        "--n",
        "2000",
        "--naive-n",
        "40",
        "--out",
        str(tmp_path),
        "--validation-rows",
        "20000",
        "--receipts",
        "--delivery-delay-ms",
        "200",
    )

    assert run.returncode == 0, run.stdout + run.stderr
    [results] = tmp_path.glob("*.json")
    result = json.loads(results.read_text())
    assert result["herald"]["status"] == "completed"
    assert result["herald"]["sent"] == 2000
    with_receipts = result["herald_receipts"]
    # Off, on, on, off: two runs each way.
    assert len(with_receipts["runs"]) == len(with_receipts["off_runs"]) == 2
    # The emulator took the carrier's delay asked for.
    assert with_receipts["delivery_delay_ms"] == 200
    for receipts_run in with_receipts["runs"]:
        assert (receipts_run["status"], receipts_run["sent"]) == ("completed", 2000)
        assert receipts_run["counts"]["delivered"] == receipts_run["receipts_applied"] == 2000
        # `sent`, then `delivered`, for each message: every callback answered 204.
        assert receipts_run["callbacks"] == {"204": 4000}
    # Herald ran twice with receipts off, before and after them; its ratios are of the mean.
    herald_runs = result["herald_runs"]
    assert herald_runs["statuses"] == ["completed"] * 2
    assert with_receipts["off_runs"] == herald_runs["runs"]
    assert herald_runs["runs"][0] == result["herald"]["messages_per_second"]
    assert result["ratios"]["herald_over_lean_ceiling"] == (
        sum(herald_runs["runs"]) / 2 / result["lean_ceiling"]["messages_per_second"]
    )
    assert with_receipts["cpu_ms_per_1000_callbacks"]["api"] > 0
    assert result["naive"]["sent"] == 80
    assert result["ceiling"]["sent"] == 4000
    assert result["lean_ceiling"]["sent"] == 4000
    assert result["lean_ceiling_herald_form"]["sent"] == 4000
    assert result["footprint"]["ledger_rows"] == 2000
    assert result["footprint"]["largest_history_events"] > 0
    assert (result["dry_run"]["rows"], result["dry_run"]["to_send"]) == (2000, 2000)
    assert result["dry_run"]["median_seconds"] > 0
    assert result["export"]["rows"] == 2000
    assert result["export"]["api_peak_rss_mb"] >= result["export"]["api_baseline_rss_mb"] > 0
    assert result["validation"]["rows"] == 20000
    assert result["validation"]["outcomes"]["rejected"] > 0
    assert all(value > 0 for value in result["ratios"].values())
    assert "validation_over_csv_reading" in result["ratios"]
    assert results.with_suffix(".png").stat().st_size > 0
    assert "Herald / naive" in run.stdout
    assert "posting Herald's form" in run.stdout
    assert "Herald, receipts on" in run.stdout
    assert "delivered 200 ms after the send" in run.stdout
    assert "Validation / reading" in run.stdout
    assert "CSV export API RSS" in run.stdout


def test_the_sweep_measures_every_size_against_one_naive_run_and_the_lean_ceiling(
    tmp_path: Path,
) -> None:
    run = bench(
        "--sweep", "1000,300,1000", "--repeat", "2", "--naive-n", "20", "--out", str(tmp_path)
    )

    assert run.returncode == 0, run.stdout + run.stderr
    [results] = tmp_path.glob("sweep-*.json")
    result = json.loads(results.read_text())
    assert [size["recipients"] for size in result["sizes"]] == [300, 300, 1000, 1000]
    # The stack's first batch, in no row: of the largest size here (under FIRST_BATCH_ROWS).
    first = result["first_batch"]
    assert (first["recipients"], first["status"], first["sent"]) == (1000, "completed", 1000)
    assert "The stack's first batch, in no row: 1,000 rows" in run.stdout
    assert result["naive"]["sent"] == 20
    # Before the first size and after each.
    for lean in ("lean_ceiling", "lean_ceiling_herald_form"):
        assert (result[lean]["sent"], len(result[lean]["runs"])) == (5000, 5)
    for size in result["sizes"]:
        assert (size["status"], size["sent"]) == ("completed", size["recipients"])
        assert size["lean_ceiling_messages_per_second"] > 0
        assert size["over_lean_ceiling"] > 0 and size["over_naive"] > 0
        assert size["over_lean_ceiling_herald_form"] > 0
        assert 0 < size["first_message_seconds"] < size["seconds"]
        # The opening, step by step up to the carrier's first request; the tail from its last.
        opening = dict((what, at) for at, what in size["timeline"]["opening"])
        assert 0 < opening["workflow started"] < opening["validate_recipients started"]
        assert opening["validate_recipients completed"] < opening["send_slice started"]
        assert opening["first carrier request"] == size["first_message_seconds"]
        [(_, last), *tail] = size["timeline"]["tail"]
        assert last == "last carrier request" and tail[-1][1] == "workflow completed"
        assert 0 < size["tail_seconds"] < size["seconds"]
        assert set(size["cpu_ms_per_1000"]) == {"api", "worker", "postgres", "temporal", "emulator"}
        # The clock ticks of /proc: a part idle for a small batch may show none.
        assert all(cpu >= 0 for cpu in size["cpu_ms_per_1000"].values())
        assert size["cpu_ms_per_1000"]["worker"] > 0
        # When each process's RSS peaked, within the size's run.
        assert set(size["peak_rss_seconds"]) == set(size["peak_rss_mb"])
        assert all(0 <= at <= size["seconds"] + 1 for at in size["peak_rss_seconds"].values())
        assert set(size["rss_at_post_mb"]) == set(size["peak_rss_mb"])
        assert all(
            0 < size["rss_at_post_mb"][p] <= size["peak_rss_mb"][p] for p in size["peak_rss_mb"]
        )
        ledger = [s for s in size["top_statements"] if "messages" in s["query"]]
        assert ledger and all(s["calls"] > 0 for s in ledger)
    assert len(result["load_average"]) == 3
    assert results.with_suffix(".png").stat().st_size > 0
    assert "first msg s" in run.stdout
    assert "first carrier request" in run.stdout


def test_the_callbacks_bench_measures_both_processes_over_every_callback(tmp_path: Path) -> None:
    options = ["--messages", "1000", "--rate", "2000", "--rounds", "2", "--out", str(tmp_path)]
    run = bench(*options, module="bench.callbacks")

    assert run.returncode == 0, run.stdout + run.stderr
    [results] = tmp_path.glob("callbacks-*.json")
    result = json.loads(results.read_text())
    # `sent`, then `delivered`, for each message: every callback verified and answered 204.
    assert [r["answers"] for r in result["runs"]] == [{"204": 2000}] * 2
    assert all(r["listener_cpu_seconds"] > 0 for r in result["runs"])
    assert all(r["carrier_cpu_seconds"] > 0 for r in result["runs"])
    assert set(result["medians"]) == {"this tree"}


def test_the_ledger_copy_bench_measures_every_variant_of_a_small_copy(tmp_path: Path) -> None:
    run = bench(
        "--rows", "2000", "--rounds", "1", "--out", str(tmp_path), module="bench.ledger_copy"
    )

    # psutil's CPU times count 10 ms ticks, which a COPY of 2,000 rows may take none of: the
    # ratio to the table as migrated divided by zero.
    assert run.returncode == 0, run.stdout + run.stderr
    [results] = tmp_path.glob("ledger-copy-*.json")
    copies = {c["variant"]: c for c in json.loads(results.read_text())["copies"]}
    assert set(copies) == set(VARIANTS)
    assert all(c["backend_cpu_seconds"] > 0 for c in copies.values())
    assert copies["as_migrated"]["ratio_to_as_migrated"] == 1.0
    # The ledger's counts take the rows unless the variant turns their trigger off.
    assert copies["as_migrated"]["counted"] == 2000
    assert copies["bare"]["counted"] == 0


def test_the_receipts_database_bench_applies_every_receipt_with_either_code(
    tmp_path: Path,
) -> None:
    options = ["--against", "HEAD", "--rows", "600", "--rounds", "1", "--out", str(tmp_path)]
    run = bench(*options, module="bench.receipts_pg")

    # Each round fails unless every row of its batch ends `delivered`.
    assert run.returncode == 0, run.stdout + run.stderr
    [results] = tmp_path.glob("receipts-pg-*.json")
    result = json.loads(results.read_text())
    assert len(result["rounds"]) == 2
    assert all(r["receipts"] == 600 for r in result["rounds"])
    # EARLY_SHARE of the receipts come before their sids: the intake queues them.
    assert all(100 < r["queued"] < 400 for r in result["rounds"]), result["rounds"]
    medians = result["per_1000_final_receipts_median"]
    assert len(medians) == 2
    assert all(m["intake_blocks"] > 0 and m["applier_blocks"] > 0 for m in medians.values())


def test_the_send_path_bench_sends_every_row_and_reads_each_parts_cpu() -> None:
    run = bench("--rows", "600", "--rounds", "1", module="bench.send_path")

    assert run.returncode == 0, run.stdout + run.stderr
    # The result is the JSON document after the log lines (migrations applied).
    [measured] = json.loads(run.stdout[run.stdout.index("\n{") :])["runs"]
    assert (measured["rows"], measured["sent"]) == (600, 600)
    assert measured["cpu_s_per_1000"]["worker"] > 0
    assert any("messages" in s["query"] for s in measured["statements"])


def test_the_throttled_bench_sends_every_batch_within_the_accounts_limit(tmp_path: Path) -> None:
    options = ["--n", "300", "--limit", "10", "--latency-ms", "20", "--repeat", "1"]
    run = bench(*options, "--out", str(tmp_path), module="bench.throttled")

    assert run.returncode == 0, run.stdout + run.stderr
    [results] = tmp_path.glob("throttled-*.json")
    result = json.loads(results.read_text())
    assert result["capacity_messages_per_second"] == 500
    runs = result["runs"]
    assert [(r["first"], r["status"], r["sent"]) for r in runs] == [
        (True, "completed", 300),
        (False, "completed", 300),
    ]
    # The emulator's limit was met (its refusals counted), and the rate set against it.
    assert sum(r["refused"] for r in runs) > 0
    assert all(r["refused"] >= 0 for r in runs)
    assert all(0 < r["over_capacity"] <= 1.05 for r in runs)
    assert "x capacity" in run.stdout


def test_the_replies_bench_answers_each_reply_with_its_rows_request_data(tmp_path: Path) -> None:
    run = bench("--n", "300", "--out", str(tmp_path), module="bench.replies")

    assert run.returncode == 0, run.stdout + run.stderr
    [results] = tmp_path.glob("replies-*.json")
    result = json.loads(results.read_text())
    assert (result["rows"], result["status"]) == (300, "completed")
    assert 0 < result["sending_after_seconds"] <= result["batch_seconds"]
    replies = result["replies"]
    assert [r["row"] for r in replies] == [300, 151, 1]
    assert all(r["status_code"] == 200 for r in replies)
    assert all(r["request_data"] == r["expected"] for r in replies)
    # Odd rows give both fields, even rows a blank plan (the first row is row 0's).
    assert replies[0]["expected"] == {"account_id": "acc_299", "plan": "gold"}
    assert replies[2]["expected"] == {"account_id": "acc_0"}


def test_the_validation_activity_bench_validates_the_file_into_the_ledger_each_run(
    tmp_path: Path,
) -> None:
    run = bench(
        "--rows", "3000", "--runs", "2", "--out", str(tmp_path), module="bench.validation_activity"
    )

    assert run.returncode == 0, run.stdout + run.stderr
    [results] = tmp_path.glob("validation-activity-*.json")
    runs = json.loads(results.read_text())["runs"]
    assert len(runs) == 2
    # The same file each run, every row a recipient or rejected (a blank or invalid number).
    assert [r["recipients"] for r in runs] == [runs[0]["recipients"]] * 2
    assert runs[0]["recipients"] + runs[0]["rejected"] == 3_000
    assert runs[0]["rejected"] > 0
    assert all(r["peak_mib"]["rss"] >= r["before_mib"]["rss"] > 0 for r in runs)
    assert all(r["cpu_seconds"] > 0 for r in runs)
