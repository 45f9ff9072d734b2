#!/usr/bin/env bash
# A stand-in coding agent for the demo: it takes the arguments amplihack remote passes
# (--<command> --max-turns N -- -p PROMPT), prints its prompt and a few progress lines over
# about 20 seconds, and exits 0; or 1 when the prompt contains the word "fail".
# Use it with: AMPLIHACK_REMOTE_AGENT=/path/to/demo-agent.sh amplihack remote start --local ...
set -u
mode=auto turns=10 prompt=
while [ $# -gt 0 ]; do
  case $1 in
    --max-turns) turns=$2; shift 2 ;;
    --) shift ;;
    -p) prompt=$2; shift 2 ;;
    --*) mode=${1#--}; shift ;;
    *) shift ;;
  esac
done
step=${DEMO_AGENT_STEP:-4}
echo "[demo-agent] mode=$mode max-turns=$turns"
echo "[demo-agent] prompt: $prompt"
for phase in "Reading the codebase" "Planning the change" "Writing code" "Running tests"; do
  sleep "$step"
  echo "[demo-agent] $phase..."
done
sleep "$step"
case $prompt in
  *fail*) echo "[demo-agent] giving up: the prompt asked me to fail"; exit 1 ;;
esac
echo "[demo-agent] done."
