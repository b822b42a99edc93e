#!/usr/bin/env bash
# The library as an EHR integrator installs it: build the sdist and the wheel from it (the hot
# modules compiled, setup.py), install it WITHOUT extras in
# a fresh venv, then import every library module, run the README's Python example,
# `movement-cds evaluate` on the bundled example and `movement-cds kb validate --strict`, write
# the patient handout as HTML, and check that `serve`, a PDF handout and `population run` say
# which extra they need. Run it with `make base-install-check`; CI runs
# it from .ci/run. pip's cache keeps durable-rules' build fast after the first time.
# Usage: base_install_check.sh PYTHON [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
WORK=${2:-$(mktemp -d)}
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK"
started=$(date +%s)

# build from a copy: setuptools would leave build/ in the working tree
mkdir -p "$WORK/src"
tar --exclude=./.venv --exclude=./.git --exclude=./build --exclude=./out --exclude='*.so' \
  -cf - . | tar -xf - -C "$WORK/src"
# the sdist, then the wheel built from it (as `pip install movement-cds` builds an sdist):
# the sdist must hold all the build needs (setup.py, mypyc.ini), and the wheel's hot modules
# are compiled (checked below)
"$PY" -m venv "$WORK/build-venv"
"$WORK/build-venv/bin/python" -m pip install --quiet build 2>&1 | grep -v "^WARNING: Location" || true
"$WORK/build-venv/bin/python" -m build --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 \
  || { tail -n 30 "$WORK/build.log"; echo "base-install-check: the build failed" >&2; exit 1; }
wheel=$(ls "$WORK"/dist/movement_cds-*.whl)
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install --quiet "$wheel" 2>&1 | grep -v "^WARNING: Location" || true

cd "$WORK"  # away from the source tree: only the installed wheel can be imported
for extra in fastapi uvicorn httpx uvloop httptools jwt weasyprint; do
  if "$WORK/venv/bin/python" -c "import $extra" 2>/dev/null; then
    echo "base-install-check: $extra is installed without the service extra" >&2; exit 1
  fi
done
ROOT="$OLDPWD" "$WORK/venv/bin/python" - >/dev/null <<'EOF'
import importlib, os, pathlib, re, sys
import tomllib
root = pathlib.Path(os.environ["ROOT"])
# every library module imports (the service's own modules need the 'service' extra)
# (the list of those is SERVICE_MODULES in tests/test_dependencies.py)
import ast
tree = ast.parse((root / "tests" / "test_dependencies.py").read_text())
service = next(ast.literal_eval(node.value.args[0]) for node in tree.body
               if isinstance(node, ast.Assign) and node.targets[0].id == "SERVICE_MODULES")
assert "cds_service._app" in service
for pkg in ("cds", "fhir_adapters", "movement_cds", "cds_service", "knowledge_base"):
    for path in sorted((root / pkg).glob("*.py")):  # the packaged modules (no subpackages)
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if name not in service and name != "movement_cds.__main__":
            mod = importlib.import_module(name)
            assert not mod.__file__.startswith(str(root)), f"{name} came from the source tree"
# the modules setup.py compiles run compiled (an extension module, not the .py beside it)
setup = ast.parse((root / "setup.py").read_text())
compiled = next(ast.literal_eval(node.value) for node in setup.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "COMPILED")
assert compiled, "setup.py compiles nothing"
for path in compiled:
    name = path.removesuffix(".py").replace("/", ".")
    mod = importlib.import_module(name)
    assert not mod.__file__.endswith(".py"), f"{name} is not compiled in the wheel: {mod.__file__}"
# the README's first Python example, on the bundled example patient
readme = (root / "README.md").read_text()
code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
bundle_json = (root / "examples" / "example-patient.json").read_text()
exec(compile(code, "README.md", "exec"), {"bundle_json": bundle_json})
print("base-install-check: README example ran", file=sys.stderr)
EOF
out=$("$WORK/venv/bin/movement-cds" evaluate "$OLDPWD/examples/example-patient.json" \
        --as-of 2026-11-02T09:00:00Z --quiet)
"$WORK/venv/bin/python" -c 'import json,sys; b=json.loads(sys.stdin.read()); assert b["resourceType"]=="Bundle" and any(e["resource"]["resourceType"]=="CarePlan" for e in b["entry"]), "no CarePlan"' <<<"$out"
"$WORK/venv/bin/movement-cds" kb validate --strict >/dev/null
# the service refuses to start with a clear one-line reason (no traceback)
if "$WORK/venv/bin/movement-cds" serve --insecure-no-auth --port 0 >"$WORK/serve.out" 2>&1; then
  echo "base-install-check: serve started without the service extra" >&2; exit 1
fi
grep -q "service' extra" "$WORK/serve.out" && ! grep -q Traceback "$WORK/serve.out"
# the patient handout: HTML with the base install; a PDF names the 'handout' extra
"$WORK/venv/bin/movement-cds" handout "$OLDPWD/examples/example-patient.json" \
  --as-of 2026-11-02T09:00:00Z --out "$WORK/handout.html" 2>/dev/null
grep -q "Your back exercises" "$WORK/handout.html"
if "$WORK/venv/bin/movement-cds" handout "$OLDPWD/examples/example-patient.json" \
     --as-of 2026-11-02T09:00:00Z --out "$WORK/handout.pdf" >"$WORK/pdf.out" 2>&1; then
  echo "base-install-check: a PDF handout was written without the handout extra" >&2; exit 1
fi
grep -q "'handout' extra" "$WORK/pdf.out" && ! grep -q Traceback "$WORK/pdf.out"
# population run says which extra it needs (no Dask, no pyarrow in the base install)
if "$WORK/venv/bin/movement-cds" population run "$WORK" --out "$WORK/pop" >"$WORK/pop.out" 2>&1; then
  echo "base-install-check: population run ran without the population extra" >&2; exit 1
fi
grep -q "movement-cds\[population\]" "$WORK/pop.out" && ! grep -q Traceback "$WORK/pop.out"
echo "base-install-check: OK in $(( $(date +%s) - started )) s (wheel, fresh venv without extras)"
