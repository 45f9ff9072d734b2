#!/usr/bin/env bash
# Runs the whole test suite: shellcheck of the scripts that run on VMs (and of the stand-ins the
# tests put in azlin's place), unit tests, and integration tests that drive the built binary
# against the stand-in azlin with real tmux and git. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-tools.sh shellcheck
shellcheck -x src/vm/*.sh
cargo test --locked
