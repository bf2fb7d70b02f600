"""``python -m teacher.data.synth OUT_DIR [--n-songs N] ...``: write a synth dataset."""

from teacher.data.synth.dataset import main

main()
