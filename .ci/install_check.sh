#!/usr/bin/env bash
# Install like a user: build the wheel from this checkout, install it into a fresh virtual environment with the
# core dependencies only (the CPU build of torch first), and run the README's quick start there, from an empty
# folder, so that the installed wheel is imported and not the checkout. Nothing is written into the checkout:
# the sources are copied to a temporary folder, built and installed there, and the folder is removed at exit.
# pip's cache is reused; only the package registries are reached.
#
#   bash .ci/install_check.sh          (also `make install-check`; called by .ci/run)
#   KEEP=1 bash .ci/install_check.sh   keeps the temporary folder for inspection
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_PIP_ARGS="${TORCH_PIP_ARGS:-}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/lightning-nas-install.XXXXXX")"
[ -n "${KEEP:-}" ] && echo "install check: working in $WORK (kept)" || trap 'rm -rf "$WORK"' EXIT
t0=$(date +%s)
step() { echo "install check [$(( $(date +%s) - t0 )) s]: $*"; }

step "copy the sources (tracked and not ignored files) to $WORK/src"
mkdir -p "$WORK/src"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) \
  | tar -xf - -C "$WORK/src"

step "fresh venv: torch==$TORCH_VERSION (CPU build) first"
"$PYTHON" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install -q torch=="$TORCH_VERSION" $TORCH_PIP_ARGS

step "build the wheel (in the copy)"
"$PY" -m pip wheel -q --no-deps --wheel-dir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 \
  || { cat "$WORK/build.log"; exit 1; }
WHEEL="$(ls "$WORK"/dist/lightning_nas-*.whl)"
"$PY" - "$WHEEL" <<'EOF2'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
missing = [n for n in ("lightning_nas/__init__.py", "lightning_nas/py.typed") if n not in names]
missing += [] if any(n.endswith(".dist-info/licenses/LICENSE") for n in names) else ["LICENSE"]
stray = [n for n in names if n.split("/")[0] in ("tests", "benchmarks", "examples", "data")]
assert not missing and not stray, f"wheel: missing {missing}, unexpected {stray}"
EOF2

step "install $(basename "$WHEEL") with its core dependencies only"
"$PY" -m pip install -q "$WHEEL"
"$PY" -m pip check
# what the extras add must not come with the core dependencies (httpx is not checked: wandb 0.31 itself pulls
# it in through cwevals); and the wheel's own core requirements name none of the extras' packages
for mod in fastapi uvicorn psycopg pytest; do
  if "$PY" -c "import $mod" 2>/dev/null; then echo "install check: $mod came with the core dependencies"; exit 1; fi
done
"$PY" - <<'EOF3'
from importlib import metadata
core = [r for r in metadata.requires("lightning-nas") or [] if "extra ==" not in r]
extra_only = ("fastapi", "uvicorn", "psycopg", "httpx", "pytest", "mlxtend", "mkdocs")
bad = [r for r in core if r.lower().startswith(extra_only)]
assert not bad, f"the wheel's core requirements include {bad}"
EOF3

step "the README's quick start, in an empty folder"
mkdir -p "$WORK/run"
"$PY" - "$ROOT/README.md" "$WORK/run/quickstart.py" <<'EOF'
import re, sys
text = open(sys.argv[1], encoding="utf-8").read()
m = re.search(r"^#+ .*quick start.*$", text, re.I | re.M)
assert m, "README.md has no 'Quick start' section"
code = re.search(r"```python\n(.*?)```", text[m.end():], re.S)
assert code, "README.md's quick start has no python block"
open(sys.argv[2], "w", encoding="utf-8").write(code.group(1))
EOF
cd "$WORK/run"
where="$(env -u PYTHONPATH "$PY" -c "import lightning_nas; print(lightning_nas.__file__)")"
[[ "$where" == "$WORK/venv/"* ]] || { echo "install check: imported $where, not the installed wheel"; exit 1; }
env -u PYTHONPATH WANDB_MODE=offline WANDB_SILENT=true "$PY" quickstart.py >"$WORK/quickstart.log" 2>&1 \
  || { tail -50 "$WORK/quickstart.log"; echo "install check: the quick start failed"; exit 1; }
grep "block1" "$WORK/quickstart.log" | tail -1

step "a missing extra is one line naming it"
msg="$(env -u PYTHONPATH "$WORK/venv/bin/lightning-nas" serve no-such-bundle 2>&1 || true)"
echo "$msg"
[ "$(printf '%s\n' "$msg" | wc -l)" -eq 1 ] && [[ "$msg" == *'pip install "lightning-nas[serve]"'* ]] \
  || { echo "install check: lightning-nas serve without fastapi did not name the serve extra"; exit 1; }

step "passed: $(basename "$WHEEL") installs and runs the quick start with its core dependencies"
