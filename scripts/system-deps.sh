#!/usr/bin/env bash
# System packages the tests need (Debian/Ubuntu): a Java runtime for PlantUML, Graphviz's dot, and Chromium
# (with a legible font for its screenshots) for the browser test, which drives it through Playwright; bubblewrap
# for the sandbox that runs generated code (`p2c exec`).
# Installs only what is missing, so a second run costs nothing.
set -euo pipefail
need=()
command -v java >/dev/null || need+=(default-jre-headless)
command -v dot >/dev/null || need+=(graphviz)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
command -v bwrap >/dev/null || need+=(bubblewrap)  # the sandbox of `p2c exec` (tests/test_sandbox.py)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "Please install: ${need[*]} (Java runtime, Graphviz, Chromium at /usr/bin/chromium, DejaVu fonts, bubblewrap)" \
    "with your system's package manager." >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
