#!/usr/bin/env bash
# Installs the node packages the tests use, from the lock file, only when missing or older
# than the lock: tools/asyncapi holds the official AsyncAPI parser, which validates
# docs/asyncapi.yaml (tests/test_interface_docs.py). Called by ensure-system-deps.sh.
set -euo pipefail
dir="$(cd "$(dirname "$0")/../tools/asyncapi" && pwd)"
installed="$dir/node_modules/.package-lock.json"  # npm writes it after every install
if [ -f "$installed" ] && [ "$installed" -nt "$dir/package-lock.json" ]; then exit 0; fi
echo "installing node packages in tools/asyncapi (npm ci)"
npm ci --prefix "$dir" --ignore-scripts --no-audit --no-fund --loglevel=error
