#!/usr/bin/env bash
# The main job on the embedded default (Fashion-MNIST): the quick preset's 700 iterations of the product's method
# (HM[B,gLGA]&ICS+APGD, eta 8), its ERS measured under the published and the strong attacker on a seeded sample of 64
# queries, ONNX export (which carries that measurement), an index of the test split, the service on 127.0.0.1, one
# /search and one /probe request, then the web page's address. Started in a terminal, the service keeps running for the
# page until Ctrl-C; otherwise (scripts, CI) it is stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
rr=".venv/bin/robust-retrieval"
run="${RUN_DIR:-runs/quickstart}"
port="${PORT:-8765}"

# The product's method at a CPU budget: a fixed iteration count, so the same seed gives the same model on any machine
# with the same kind of CPU and thread count.
[ -f "$run/metrics.json" ] || $rr train --preset quick --out "$run"  # a rerun reuses it
[ -f "$run/robustness-summary.json" ] || $rr evaluate "$run" --protocols rob28,strong --max-queries 64
[ -f "$run/bundle/manifest.json" ] || $rr export "$run" -o "$run/bundle"
[ -f "$run/index/CURRENT" ] || $rr index --bundle "$run/bundle" --dataset fashion-mnist:test -o "$run/index"

# A query image: test item 0 of Fashion-MNIST written as a PNG.
.venv/bin/python - "$run/query.png" <<'PY'
import sys
from torchvision.transforms.functional import to_pil_image
from retrieval.datasets import load_dataset
image, label = load_dataset("fashion-mnist", "test")[0]
to_pil_image(image).save(sys.argv[1])
print(f"query: fashion-mnist test item 0, label {label}")
PY

# /probe is CPU-heavy, so it needs a key: a fresh one per run unless RR_API_KEY is set.
key="${RR_API_KEY:-$(.venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(16))')}"
RR_API_KEY="$key" $rr serve "$run/index" --port "$port" --enable-probe 2> "$run/serve.log" &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 120); do
  curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break
  kill -0 $server 2>/dev/null || { echo "the service did not start; see $run/serve.log" >&2; exit 1; }
  sleep 0.5
done

echo "== GET /info: the model's measured robustness"
curl -fsS "http://127.0.0.1:$port/info" | .venv/bin/python -c 'import json, sys; print(json.dumps(json.load(sys.stdin)["model"]["robustness"], indent=2))'
echo "== POST /search"
curl -fsS -F "image=@$run/query.png" -F top_k=5 "http://127.0.0.1:$port/search" | .venv/bin/python -m json.tool
echo "== POST /probe (QA-, 32 steps)"
curl -fsS -H "X-API-Key: $key" -F "image=@$run/query.png" -F attack=QA- -F steps=32 -F top_k=5 \
  "http://127.0.0.1:$port/probe" \
  | .venv/bin/python -m json.tool
echo "service log: $run/serve.log; API key for the page's probe panel: $key"
if [ -t 0 ] && [ -t 1 ]; then  # started in a terminal: keep the service up for the page until Ctrl-C
  trap 'exit 130' INT TERM     # the EXIT trap then stops the service
  echo "web page: http://127.0.0.1:$port/  (the service keeps running; Ctrl-C stops it)"
  wait $server
else
  echo "web page: http://127.0.0.1:$port/  (scripted run: the service stops now; run this job in a terminal to keep it)"
fi
