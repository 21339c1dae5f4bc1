#!/usr/bin/env bash
# Assemble README.md from docs/readme_*.md and the per-area fragments in docs/readme/.
set -euo pipefail
cd "$(dirname "$0")/.."
{
  cat docs/readme_head.md docs/readme_bench.md
  [ -f docs/readme_status.md ] && cat docs/readme_status.md
  cat docs/readme_notes.md
  printf '\n# Components\n'
  for f in kernels_lif kernels_ssm ssm spikformer spikegpt mixers energy experiments; do
    printf '\n'
    cat "docs/readme/$f.md"
  done
} > README.md
