"""Uploads stream to PostgreSQL in bounded memory: the API as `make run` starts it (a uvicorn
process of its own) takes twenty 40 MB files at once and its resident memory stays under
300 MB; the bytes stored are the bytes sent. A Postman batch upload, checked whole before
its answer, streams too."""

from pathlib import Path

from bench.uploads import measure, measure_postman

UPLOADS = 20
SIZE = 40 * 10**6
RSS_LIMIT_MB = 300


def test_twenty_concurrent_40_mb_uploads_keep_the_api_under_300_mb(
    postgres_dsn: str, tmp_path: Path
) -> None:
    result = measure(postgres_dsn, tmp_path, uploads=UPLOADS, size=SIZE)

    assert result.statuses == [200] * UPLOADS
    assert result.stored_md5_ok
    assert result.peak_mb < RSS_LIMIT_MB, result


def test_a_postman_upload_checked_whole_keeps_the_api_under_300_mb(
    postgres_dsn: str, tmp_path: Path
) -> None:
    result = measure_postman(postgres_dsn, tmp_path, rows=100_000)

    # Checked and stored; no Temporal server runs here, so its workflow cannot start.
    assert (result.status, result.code) == (503, "TEMPORAL_UNAVAILABLE"), result
    assert result.peak_mb < RSS_LIMIT_MB, result
