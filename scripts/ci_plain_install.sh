#!/usr/bin/env bash
# CI: plain `pip install .` as a user types it (pip's build isolation) into a fresh venv that holds only
# torch and numpy, then etb_block and bounds called from outside the repository. The first import
# compiles the extension into a scratch cache (etbkernels/_build/load.py); a second import must reuse it.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
T0=$(date +%s)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1 ETBK_CACHE_DIR="$WORK/cache"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q torch==2.13.0 numpy 2>&1 | grep -v '^WARNING: Location' || true
"$WORK/venv/bin/pip" install -q "$ROOT" 2>&1 | grep -v '^WARNING: Location' || true
cd "$WORK"
cat > check.py <<'PYEOF'
import torch
import etbkernels
assert "site-packages" in etbkernels.__file__, etbkernels.__file__  # the installed copy, not the checkout
torch.manual_seed(0)
x, w1, b1, w2 = torch.rand(4, 7), torch.randn(5, 7), torch.randn(5), torch.randn(3, 5)
b = etbkernels.etb_block(x, 0.05, w1, b1, w2)
ref = etbkernels.reference.etb_block_ref(x.double(), torch.full_like(x, 0.05).double(), w1.double(), b1.double(), w2.double())
torch.testing.assert_close(b.lower.double(), ref.lower, rtol=1e-5, atol=1e-5)
model = torch.nn.Sequential(torch.nn.Linear(7, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3)).eval()
for method in ("ibp", "crown-ibp", "etb"):
    bb = etbkernels.bounds(model, x, 0.05, method=method)
    assert (bb.lower <= model(x) + 1e-6).all() and (model(x) <= bb.upper + 1e-6).all(), method
print("ci_plain_install: etb_block and bounds work from", etbkernels.__file__)
PYEOF
"$WORK/venv/bin/python" check.py
# the second import loads the cached build: no compile message
msg=$("$WORK/venv/bin/python" -c "import etbkernels" 2>&1)
[ -z "$msg" ] || { echo "ci_plain_install: second import printed: $msg" >&2; exit 1; }
echo "ci_plain_install: OK in $(( $(date +%s) - T0 )) s"
