#!/bin/sh
# SPDX-License-Identifier: MIT
# `make demo`: runs scripts/demo.py with the system Python (its standard library is all the
# demo needs), from the repository root.
set -e
cd "$(dirname "$0")/.."
python=/usr/bin/python3
[ -x "$python" ] || python=python3
exec "$python" scripts/demo.py "$@"
