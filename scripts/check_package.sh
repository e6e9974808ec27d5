#!/usr/bin/env bash
# `make package-check`: the package installs like one. Builds the sdist and the wheel with
# `python -m build`, installs the wheel (with the eval extra) into a clean virtual environment
# outside the repository, then runs `ancra --help` and a tiny `ancra eval` there. Uses the package
# registry (build's isolated environment, the wheel's dependencies), so it is not part of `make test`.
# On a machine without a GPU the CPU build of torch is installed first, as `make install` does.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
TORCH_CPU=${TORCH_CPU:-torch==2.13.0+cpu}
TORCH_CPU_URL=${TORCH_CPU_URL:-https://download.pytorch.org/whl/cpu}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
"$PY" -m build --outdir "$TMP/dist" . > "$TMP/build.log" 2>&1 || { tail -30 "$TMP/build.log"; exit 1; }
ls "$TMP/dist"
python3 -m venv "$TMP/venv"
V="$TMP/venv/bin"
if command -v nvidia-smi > /dev/null 2>&1; then "$V/pip" install -q "torch>=2.1,<3";
else "$V/pip" install -q "$TORCH_CPU" || "$V/pip" install -q "$TORCH_CPU" --extra-index-url "$TORCH_CPU_URL"; fi
"$V/pip" install -q "$(ls "$TMP"/dist/*.whl)[eval]"
# the sdist holds the package and its metadata too
tar -tzf "$TMP"/dist/*.tar.gz > "$TMP/sdist.txt"
grep -q "src/ancra/cli.py" "$TMP/sdist.txt"
cp results/fmnist/standard.pt "$TMP/model.pt"
cd "$TMP"  # away from the source tree: the installed package is what runs
"$V/ancra" --help > /dev/null
"$V/python" -c "import ancra, pathlib; assert 'site-packages' in ancra.__file__, ancra.__file__; print('ancra', ancra.__version__, 'from', pathlib.Path(ancra.__file__).parent)"
"$V/ancra" eval model.pt --suite standard --quick --n-examples 16 --batch-size 16 --device cpu --out eval > eval.log
"$V/ancra" verify eval > verify.log
grep -q "worst case" eval.log && grep -q "^verified" verify.log
echo "package check passed: sdist and wheel built; the wheel installs into a clean venv, runs --help, eval and verify"
