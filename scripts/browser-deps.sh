#!/bin/sh
# What the real-browser test (tests/e2e/browser.rs) needs beyond Chromium and Kamailio: JsSIP 3.13
# from the npm registry, bundled for the page with esbuild (JsSIP's npm package ships CommonJS
# only). Writes target/browser-deps/jssip.js; idempotent.
set -eu
cd "$(dirname "$0")/.."
out=target/browser-deps
mkdir -p "$out"
if [ -s "$out/jssip.js" ]; then
    exit 0
fi
command -v npm >/dev/null || { echo "browser-deps: npm is missing (apt-get install npm)" >&2; exit 1; }
npm install --prefix "$out" --no-audit --no-fund --silent jssip@3.13 esbuild@0.25 >&2
"$out/node_modules/.bin/esbuild" "$out/node_modules/jssip/lib/JsSIP.js" \
    --bundle --format=iife --global-name=JsSIP --log-level=warning --outfile="$out/jssip.js"
echo "browser-deps: wrote $out/jssip.js"
