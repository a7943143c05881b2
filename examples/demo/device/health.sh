#!/bin/sh
# The demo device's health check: the installed firmware must pass its self-test.
# $1: the inventory directory. Exit 0 = healthy; anything else makes the agent restore the
# previous set.
fw="$1/acme.thermostat/firmware.bin"
if grep -q "self-test: FAULTY" "$fw" 2>/dev/null; then
  echo "thermostat self-test failed: $(grep 'self-test' "$fw")" >&2
  exit 1
fi
exit 0
