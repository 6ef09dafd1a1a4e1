#!/usr/bin/env bash
# Browser test of the web chat: headless Chromium (Debian's package; no browser download)
# driven by playwright-core, against a real `sluice serve` that the test starts itself on
# SmolLM2-135M-Instruct. Also runs the Markdown renderer's unit tests.
#
#   SLUICE_BIN=target/release/sluice SLUICE_TEST_MODELS=../shared/models tests/e2e/run.sh
#
# Screenshots: tests/e2e/artifacts/chat.png and chat-phone.png.
set -euo pipefail
cd "$(dirname "$0")"
: "${SLUICE_BIN:?set SLUICE_BIN to the sluice binary (e.g. target/release/sluice)}"
: "${SLUICE_TEST_MODELS:?set SLUICE_TEST_MODELS to the test models directory}"
case "$SLUICE_BIN" in /*) ;; *) SLUICE_BIN="$(cd "$OLDPWD" && pwd)/$SLUICE_BIN" ;; esac
case "$SLUICE_TEST_MODELS" in /*) ;; *) SLUICE_TEST_MODELS="$(cd "$OLDPWD" && pwd)/$SLUICE_TEST_MODELS" ;; esac
export SLUICE_BIN SLUICE_TEST_MODELS

if [ ! -x /usr/bin/chromium ]; then
  echo "installing Debian's chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -d node_modules/playwright-core ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  # playwright-core only: it never downloads a browser.
  npm ci --no-audit --no-fund --loglevel=error
fi
rm -rf artifacts
mkdir -p artifacts
node --test --test-reporter=spec markdown.test.mjs chat.test.mjs
