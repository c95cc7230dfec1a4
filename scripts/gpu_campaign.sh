#!/usr/bin/env bash
# The GPU campaign in one call on the lent GPU machine (device tool, carry ["campaign_carry"]):
#   bash scripts/gpu_campaign.sh [extra gpu_campaign.py run options]
# Writes at most 8 files into $OUT (shards, manifest, logs, evaluation). See docs/training.md, "GPU campaign".
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-campaign_out}"
PY="$(command -v python3)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
exec "$PY" scripts/gpu_campaign.py run --out "$OUT" "$@"
