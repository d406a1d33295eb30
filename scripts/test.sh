#!/usr/bin/env bash
# The test command: lint (ruff), type-check (mypy) and the test suite (pytest).
#   bash scripts/test.sh            default suite (about 5 minutes on 2 cores, in 2 pytest processes)
#   bash scripts/test.sh --slow     only the slow suites (accuracy targets, long runs)
#   bash scripts/test.sh --browser  only the status page in headless chromium (installs Debian's
#                                   chromium and chromium-driver with apt-get if they are missing)
# Extra arguments go to pytest. pytest's exit code 5 (no tests ran) counts as a failure. Tests run in
# TLSERVE_TEST_WORKERS processes (pytest-xdist; default 2); models the tests share are trained once.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export PATH="$PWD/.venv/bin:$PATH"
marker="not slow and not browser"
if [ "${1:-}" = "--slow" ]; then marker="slow"; shift; fi
if [ "${1:-}" = "--browser" ]; then
  marker="browser"; shift
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    echo "== apt-get install chromium chromium-driver"
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver
  fi
fi
echo "== ruff" && ruff check .
echo "== mypy" && mypy tlserve server trainer client scripts bench offline
# import-linter reads the package from the file system, so it checks a plain (non-editable)
# install of the tree, where server/, trainer/ and client/ sit inside tlserve/ as users get them.
echo "== import contracts (pyproject.toml [tool.importlinter])"
contracts=$(mktemp -d)
trap 'rm -rf "$contracts" "$contracts.log"' EXIT
# Pure Python (TLSERVE_PURE_PYTHON=1): the contracts are about Python imports, the compiled encoder has none.
TLSERVE_PURE_PYTHON=1 pip install -q --disable-pip-version-check --no-deps --no-compile --target "$contracts" . \
  >"$contracts.log" 2>&1 \
  || { cat "$contracts.log" >&2; exit 1; }
# A wide console, so that no contract's name is wrapped; the banner is left out.
(cd "$contracts" && PYTHONPATH="$contracts" COLUMNS=200 lint-imports --no-cache "$OLDPWD/pyproject.toml" \
  | grep -E "KEPT|BROKEN|^Contracts:|not allowed|->|^Analyzed")
echo "== pytest -m '$marker'"
set +e
pytest -m "$marker" -n "${TLSERVE_TEST_WORKERS:-2}" --dist loadgroup "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then echo "test: pytest collected no tests; failing" >&2; exit 1; fi
exit "$code"
