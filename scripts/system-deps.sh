#!/usr/bin/env bash
# Optional system packages: Fashion-MNIST from Debian, Chromium for looking at reports.
# Best effort: skipped where apt-get is missing or we are not root; xailab works without them.
set -u
want=()
[ -d /usr/share/datasets/fashion-mnist ] || want+=(dataset-fashion-mnist)
if [ "${XAILAB_BROWSER:-1}" = 1 ] && ! command -v chromium >/dev/null; then want+=(chromium); fi
[ ${#want[@]} -eq 0 ] && exit 0
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "installing system packages: ${want[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}") >/dev/null 2>&1 \
    || echo "warning: could not install ${want[*]} (tests that need them will be skipped)"
else
  echo "note: ${want[*]} not installed (needs apt-get as root); tests that need them will be skipped"
fi
exit 0
