#!/bin/sh
# The image's entry point: the first argument names the role (see deploy/Dockerfile).
set -eu
role="${1:-api}"
[ "$#" -gt 0 ] && shift
case "$role" in
    api)
        # A stream (SSE) may stay open: give requests 20 s after SIGTERM, then close.
        exec uvicorn --factory api.app:app_from_env \
            --host "${HERALD_API_HOST}" --port "${HERALD_API_PORT}" \
            --timeout-graceful-shutdown 20 --no-server-header "$@"
        ;;
    worker) exec python -m worker "$@" ;;
    prepare) exec python -m deploy.prepare "$@" ;;
    *) exec "$role" "$@" ;;
esac
