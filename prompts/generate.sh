#!/bin/sh
# Regenerate the shipped prompts (8 kHz mono 16-bit WAV) from the texts in node/prompts.py.
# A development-time tool: needs espeak-ng and sox (Debian packages); the node only reads the
# files. Run from the top of the source tree: sh prompts/generate.sh
set -eu
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - <<'PY' > "$tmp/list"
from node.prompts import PROMPTS
for name, text in PROMPTS.items():
    print(f"{name}\t{text}")
PY
while IFS="$(printf '\t')" read -r name text; do
    out="prompts/$name.wav"
    if [ "$name" = hold ]; then
        # music on hold: a soft two-note chime, 4 s, looped by the player
        sox -n -r 8000 -c 1 -b 16 "$out" synth 0.4 sine 660 fade 0.02 0.4 0.2 vol 0.25 \
            : synth 0.4 sine 880 fade 0.02 0.4 0.2 vol 0.25 : synth 1.2 sine 0 vol 0 \
            : synth 0.4 sine 660 fade 0.02 0.4 0.2 vol 0.25 : synth 0.4 sine 550 fade 0.02 0.4 0.2 vol 0.25 \
            : synth 1.2 sine 0 vol 0
    elif [ "$name" = voicemail ]; then
        espeak-ng -v en-us -s 160 -w "$tmp/speech.wav" "$text"
        sox "$tmp/speech.wav" -r 8000 -c 1 -b 16 "$tmp/a.wav" silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse norm -3
        sox -n -r 8000 -c 1 -b 16 "$tmp/beep.wav" synth 0.3 sine 0 : synth 0.5 sine 1000 vol 0.4
        sox "$tmp/a.wav" "$tmp/beep.wav" "$out"
    else
        espeak-ng -v en-us -s 160 -w "$tmp/speech.wav" "$text"
        sox "$tmp/speech.wav" -r 8000 -c 1 -b 16 "$out" silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse pad 0 0.15 norm -3
    fi
done < "$tmp/list"
