#!/usr/bin/env bash
# Screenshot a plan's report.html in a headless browser, to see the page as a person opens it.
#   scripts/screenshot-report.sh PLAN_DIR OUT.png [WIDTH,HEIGHT]    (default 1280,2400: the page's top, tables too)
# Needs chromium (Debian: apt-get install -y chromium). The page has no outside references; networking is off anyway.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 PLAN_DIR OUT.png [WIDTH,HEIGHT]" >&2
    exit 2
fi
report="$(cd "$1" && pwd)/report.html"
out="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
size="${3:-1280,2400}"
if [ ! -f "$report" ]; then
    echo "error: $report not found (is $1 a plan folder?)" >&2
    exit 1
fi
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$browser" ]; then
    echo "error: no chromium found; install it (Debian: apt-get install -y chromium)" >&2
    exit 1
fi
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
    --window-size="$size" --screenshot="$out" "file://$report" 2>/dev/null
test -s "$out"
echo "$out"
