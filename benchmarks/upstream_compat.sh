#!/usr/bin/env bash
# Run the portable part of Monarch's own Python tests against an interpreter; print the pass count.
# Usage: benchmarks/upstream_compat.sh /path/to/monarch [--python PY] [--timeout S] [-j N] [--list]
# The checkout may be a work tree or a bare git dir; nothing is fetched. See UPSTREAM_COMPAT.md.
set -euo pipefail
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: $0 /path/to/monarch-checkout [--python PY] [--rev REV] [--timeout S] [-j N] [-k SUBSTR] [--list] [--out FILE]" >&2
  exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 "$here/upstream_compat.py" "$@"
