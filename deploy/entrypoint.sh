#!/bin/sh
# The image's entry point: the first argument names the role (see deploy/Dockerfile).
set -eu
role="${1:-api}"
[ "$#" -gt 0 ] && shift
case "$role" in
    api)
        # A stream (SSE) may stay open: give requests 20 s after SIGTERM, then close. No
        # access line: its path holds phone numbers (opt-outs, conversations) and short-link
        # codes, and it is a line per carrier callback; herald_api_requests_total counts them.
        exec uvicorn --factory api.app:app_from_env \
            --host "${HERALD_API_HOST}" --port "${HERALD_API_PORT}" \
            --timeout-graceful-shutdown 20 --no-server-header --no-access-log "$@"
        ;;
    worker) exec python -m worker "$@" ;;
    prepare) exec python -m deploy.prepare "$@" ;;
    *) exec "$role" "$@" ;;
esac
