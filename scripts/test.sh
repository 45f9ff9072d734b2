#!/usr/bin/env bash
# Runs the whole test suite: unit tests, and integration tests that drive the built binary
# against the stand-in azlin with real tmux and git. Installs tmux and git (and zsh and fish,
# which check the completion scripts) first if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-tools.sh --for-tests
cargo test --locked
