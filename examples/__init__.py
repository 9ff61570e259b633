# SPDX-License-Identifier: MIT
"""The classic RNN applications on fastrnn, run by `python -m fastrnn demo NAME` (char_rnn,
digits, ptb; _common holds what they share). Each module has main(argv) and also runs as a
script from the checkout: `python examples/char_rnn.py --quick`."""
