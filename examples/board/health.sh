#!/bin/sh
# The demo board's health check: the system that booted must pass its self-test, which the
# simulated images decide by their first line (`kind=good` passes, anything else fails).
# $1: the board's directory (boot.json, the file bootloader's state, and slots/a.img,
# slots/b.img). Exit 0 = healthy; anything else makes the agent mark the new slot bad and
# reboot into the previous one.
board=$1
slot=$(sed -n 's/.*"booted": *"\([AB]\)".*/\1/p' "$board/boot.json")
case $slot in
  A) image="$board/slots/a.img" ;;
  B) image="$board/slots/b.img" ;;
  *) echo "board self-test: no booted slot in $board/boot.json" >&2; exit 1 ;;
esac
header=$(head -c 64 "$image" | head -n 1)
case $header in
  *kind=good*) exit 0 ;;
esac
echo "board self-test failed on slot $slot: ${header:-no image header}" >&2
exit 1
