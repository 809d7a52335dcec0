#!/usr/bin/env bash
# The sha256 of every output `falco anonymize` writes for the shared photos, for each method,
# with the tiny random model set: run it before and after a refactor and diff the two lists
# (the outputs must be byte-identical; thread count and batch size are fixed here).
#   scripts/output_hashes.sh OUTDIR [PHOTOS]   -> OUTDIR/hashes.txt
set -euo pipefail
out=${1:?usage: scripts/output_hashes.sh OUTDIR [PHOTOS]}
photos=${2:-../shared/data/faces}
export OMP_NUM_THREADS=2
rm -rf "$out" && mkdir -p "$out"
falco models tiny "$out/models" >/dev/null
for m in falco blur pixelate mask ciagan deepprivacy; do
  falco anonymize "$photos" --out "$out/out-$m" --models "$out/models" --method "$m" --steps 4 --bank-size 64 \
    --batch-size 8 --no-progress --format png --save-crops >"$out/log-$m.txt" 2>&1 || echo "exit $? ($m)" >>"$out/log-$m.txt"
done
(cd "$out" && find out-* -type f \( -name '*.png' -o -name '*.jpg' -o -name '*.safetensors' \) ! -path '*/bank/*' \
  | sort | xargs sha256sum >hashes.txt)
echo "$(wc -l <"$out/hashes.txt") outputs hashed in $out/hashes.txt"
