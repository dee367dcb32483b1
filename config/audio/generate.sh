#!/bin/sh
# Regenerate the campaign audio from the .txt scripts next to this file.
# Needs espeak-ng and sox (Debian: apt-get install -y espeak-ng sox).
# Output: 8000 Hz, mono, 16-bit PCM WAV, telephone band, peak-normalised to -1 dBFS, leading and
# trailing silence trimmed to 0.1 s and 0.2 s.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for name in safe_harbor robocall machine_message; do
    espeak-ng -v en-us -s 165 -p 45 -w "$tmp/$name.wav" -f "$name.txt"
    sox -R -D "$tmp/$name.wav" -r 8000 -c 1 -b 16 -e signed-integer "$name.wav" \
        highpass 300 lowpass 3400 rate -h 8000 norm -1 \
        silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse pad 0.1 0.2
    echo "$name.wav: $(soxi -D "$name.wav") s, $(stat -c %s "$name.wav") bytes"
done
