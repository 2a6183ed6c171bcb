#!/usr/bin/env bash
# Debian's Chromium, its WebDriver and CJK fonts, for the web chat page's browser test
# (tests/integration/test_web_chat.py). Needs root (CI runs as root); a no-op when present.
set -euo pipefail
if command -v chromium >/dev/null && command -v chromedriver >/dev/null \
    && dpkg -s fonts-noto-cjk >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-noto-cjk >/dev/null
