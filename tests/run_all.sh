#!/usr/bin/env bash
# tests/run_all.sh -- THE test command: run the test suite in every supported
# TransformerLens environment, then print a summary. Exit status 0 iff all passed.
#
#   bash tests/run_all.sh                      # all environments: tl39 tl43 tl218
#   bash tests/run_all.sh tl43 tl218           # a subset
#   bash tests/run_all.sh tl39 -- -x -k cache  # everything after -- goes to pytest
#
# Per environment (env_pytest_args below): tl39 runs everything, the slow paper-scale checks
# and notebooks included; tl43 runs the rest under jaxtyping's pytest hook with beartype
# (every annotated shape in tl_inversion checked at call time); tl218 runs the rest plainly.
# Every run prints its ten slowest tests. Before the tests, `ruff check` (pyproject's rules)
# runs once, from the first environment's venv.
#
# Environments (pins: see env_pins below):
#   tl39   transformer-lens==3.9.0   (HookedTransformer + TransformerBridge)
#   tl43   transformer-lens==4.3.0   (TransformerBridge only)
#   tl218  transformer-lens==2.18.0  (HookedTransformer only; needs numpy<2, transformers 4.x,
#          and pyarrow<26 -- pyarrow 26 refuses to import with numpy<2, and datasets, which
#          transformer_lens imports at import time, imports pyarrow)
#
# Each environment gets a venv at $VENV_ROOT/<env>-<hash>, where VENV_ROOT defaults to
# ${TL_INVERSION_VENV_DIR:-$HOME/.cache/tl-inversion/venvs} and hash covers pyproject.toml,
# the python version, the pins and RECIPE_VERSION. A venv is reused when its marker file
# records that hash (the marker is written only after a complete install); otherwise it is
# rebuilt: torch==2.13.0 FIRST (a CPU wheel on local disk -- any other torch requirement on a
# torch-less machine pulls a multi-GB CUDA build), then `-e ".[test]"` plus the env's pins.
#
# System packages: Debian's chromium (the viewer's end-to-end browser test drives it with
# Playwright; no browser is downloaded) is installed with apt-get when missing
# (TL_INVERSION_NO_APT=1 skips that; the browser test then skips itself).
#
# Other knobs: TL_INVERSION_PYTHON (default python3), TL_INVERSION_REBUILD=1 (rebuild venvs).
# Tests see TL_INVERSION_ENV=<env>; HF_HUB_OFFLINE defaults to 1 (no hub in CI).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

PYTHON="${TL_INVERSION_PYTHON:-python3}"
VENV_ROOT="${TL_INVERSION_VENV_DIR:-$HOME/.cache/tl-inversion/venvs}"
TORCH_PIN="torch==2.13.0"
RECIPE_VERSION=1 # bump to invalidate every cached venv when the install steps change
ALL_ENVS=(tl39 tl43 tl218)

env_pins() { # one requirement per line; fails for unknown envs
    case "$1" in
    tl39) printf '%s\n' "transformer-lens==3.9.0" ;;
    tl43) printf '%s\n' "transformer-lens==4.3.0" ;;
    tl218) printf '%s\n' "transformer-lens==2.18.0" "numpy<2" "transformers<5" "pyarrow<26" ;;
    *) return 1 ;;
    esac
}

env_pytest_args() { # the pytest arguments of each environment (before the user's)
    case "$1" in
    tl39) printf '%s\n' "--durations=10" ;;
    # jaxtyping's hook instruments the whole package: every annotation says what its function
    # accepts, so a bad input meets the package's own message (arguments a function checks itself
    # are annotated loosely, e.g. `Any  # ... checked here` or `_`-prefixed axes), not TypeCheckError.
    tl43) printf '%s\n' "--durations=10" "-m" "not slow" \
        "--jaxtyping-packages=tl_inversion,beartype.beartype" ;;
    tl218) printf '%s\n' "--durations=10" "-m" "not slow" ;;
    esac
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

log() { printf '\n[run_all %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# --- arguments ---------------------------------------------------------------------------
envs=()
pytest_args=()
while (($# > 0)); do
    case "$1" in
    --)
        shift
        pytest_args=("$@")
        break
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    all) envs+=("${ALL_ENVS[@]}") ;;
    *)
        if env_pins "$1" >/dev/null; then
            envs+=("$1")
        else
            echo "run_all.sh: unknown environment '$1' (known: ${ALL_ENVS[*]} all)" >&2
            exit 2
        fi
        ;;
    esac
    shift
done
if ((${#envs[@]} == 0)); then envs=("${ALL_ENVS[@]}"); fi
mapfile -t envs < <(printf '%s\n' "${envs[@]}" | awk '!seen[$0]++') # dedupe, keep order

if ! command -v "$PYTHON" >/dev/null; then
    echo "run_all.sh: '$PYTHON' not found (set TL_INVERSION_PYTHON)" >&2
    exit 2
fi

# --- helpers -----------------------------------------------------------------------------
# pip, minus this machine's harmless "Location 'file:///opt/...' is ignored" noise.
# The pipeline's status is pip's (pipefail).
pip_install() { # pip_install PYTHON ARGS...
    local py=$1
    shift
    "$py" -m pip install -q --disable-pip-version-check "$@" 2>&1 |
        { grep -v -E "^WARNING: Location '[^']*' is ignored: it is neither a file nor a directory\.$" || true; }
}

pins_hash() { # pins_hash ENV
    {
        echo "recipe=$RECIPE_VERSION"
        "$PYTHON" -c 'import sys, platform; print(sys.version, platform.machine())'
        echo "$TORCH_PIN"
        env_pins "$1"
        cat pyproject.toml
    } | sha256sum | cut -c1-12
}

# build_venv ENV DIR HASH: (re)create DIR from scratch. Runs where `set -e` may be inactive,
# so every step is checked explicitly.
build_venv() {
    local name=$1 venv=$2 hash=$3 pins
    mapfile -t pins < <(env_pins "$name")
    rm -rf "$venv" || return 1
    log "$name: creating venv $venv"
    "$PYTHON" -m venv "$venv" || return 1
    log "$name: pip install $TORCH_PIN"
    pip_install "$venv/bin/python" "$TORCH_PIN" || return 1
    log "$name: pip install -e .[test] ${pins[*]}"
    # torch pinned again so the resolver can never swap it for a CUDA build.
    pip_install "$venv/bin/python" "$TORCH_PIN" -e ".[test]" "${pins[@]}" || return 1
    {
        echo "$hash"
        echo "$REPO_ROOT"
        printf '%s\n' "$TORCH_PIN" "${pins[@]}"
    } >"$venv/.tl-inversion-pins.tmp" || return 1
    mv "$venv/.tl-inversion-pins.tmp" "$venv/.tl-inversion-pins"
}

# ensure_venv ENV DIR HASH: reuse DIR when its marker matches, else build it. Serialised
# with flock so concurrent runs sharing the cache don't build the same venv twice.
ensure_venv() {
    local name=$1 venv=$2 hash=$3 marker="$2/.tl-inversion-pins"
    if [[ "${TL_INVERSION_REBUILD:-0}" != 1 && -f "$marker" && "$(head -n1 "$marker")" == "$hash" ]]; then
        log "$name: reusing $venv"
        if [[ "$(sed -n 2p "$marker")" != "$REPO_ROOT" ]]; then
            log "$name: re-pointing the editable install at $REPO_ROOT"
            pip_install "$venv/bin/python" --no-deps -e . || return 1
            sed -i "2s|.*|$REPO_ROOT|" "$marker" || return 1
        fi
        return 0
    fi
    build_venv "$name" "$venv" "$hash"
}

ensure_chromium() { # Debian's chromium for the browser test; never fatal
    if command -v chromium >/dev/null 2>&1 || [[ "${TL_INVERSION_NO_APT:-0}" == 1 ]]; then return 0; fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "no apt-get: the viewer's browser test will skip (install chromium yourself)"
        return 0
    fi
    local sudo=""
    if [[ $(id -u) != 0 ]]; then sudo=sudo; fi
    log "installing Debian's chromium (browser test)"
    { $sudo apt-get update -q && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends chromium; } \
        >"${TMPDIR:-/tmp}/tl-inversion-apt.log" 2>&1 || log "chromium install failed (see ${TMPDIR:-/tmp}/tl-inversion-apt.log): the browser test will skip"
}

ensure_chromium
mkdir -p "$VENV_ROOT"
LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/tl-inversion-run_all.XXXXXX")"
trap 'rm -rf "$LOG_DIR"' EXIT

export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export TRANSFORMERS_OFFLINE="${TRANSFORMERS_OFFLINE:-$HF_HUB_OFFLINE}"
export HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
export MPLBACKEND="${MPLBACKEND:-Agg}"
unset VIRTUAL_ENV PYTHONPATH || true

declare -A STATUS T_INSTALL T_TEST SUMMARY
RUFF_DONE=""
RUFF_STATUS="not run"
overall=0
T0=$SECONDS

# --- per environment -----------------------------------------------------------------------
for name in "${envs[@]}"; do
    hash="$(pins_hash "$name")"
    venv="$VENV_ROOT/$name-$hash"
    py="$venv/bin/python"
    SUMMARY[$name]=""
    T_TEST[$name]="-"

    log "===== $name: $(env_pins "$name" | tr '\n' ' ')====="
    t=$SECONDS
    rc=0
    if command -v flock >/dev/null; then
        (
            flock 9 || exit 1
            ensure_venv "$name" "$venv" "$hash"
        ) 9>"$venv.lock" || rc=$?
    else
        ensure_venv "$name" "$venv" "$hash" || rc=$?
    fi
    T_INSTALL[$name]=$((SECONDS - t))
    if ((rc != 0)); then
        log "$name: INSTALL FAILED (rc=$rc)"
        STATUS[$name]="FAIL(install)"
        overall=1
        continue
    fi

    rc=0
    "$py" -c 'import importlib.metadata as m, sys, transformer_lens, torch, transformers, numpy; print("python", sys.version.split()[0], "| transformer-lens", m.version("transformer-lens"), "| torch", torch.__version__, "| transformers", transformers.__version__, "| numpy", numpy.__version__)' || rc=$?
    if ((rc != 0)); then
        log "$name: IMPORT FAILED (rc=$rc)"
        STATUS[$name]="FAIL(import)"
        overall=1
        continue
    fi

    if [[ -z "$RUFF_DONE" ]]; then
        RUFF_DONE=1
        log "ruff check (from $name's venv)"
        if "$venv/bin/ruff" check tl_inversion tests benchmarks; then
            RUFF_STATUS=PASS
        else
            RUFF_STATUS=FAIL
            overall=1
        fi
    fi

    mapfile -t env_args < <(env_pytest_args "$name")
    log "$name: pytest ${env_args[*]} ${pytest_args[*]}"
    t=$SECONDS
    rc=0
    (
        export TL_INVERSION_ENV="$name" VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH"
        exec "$py" -m pytest -q -p no:cacheprovider "${env_args[@]}" "${pytest_args[@]}"
    ) 2>&1 | tee "$LOG_DIR/$name.log" || rc=$?
    T_TEST[$name]=$((SECONDS - t))
    SUMMARY[$name]="$(grep -E '[0-9]+ (passed|failed|errors?|skipped|xfailed|xpassed|deselected)|no tests ran' "$LOG_DIR/$name.log" |
        tail -n1 | sed -E 's/^=+ //; s/ =+$//')" || true
    case $rc in
    0) STATUS[$name]="PASS" ;;
    5) STATUS[$name]="FAIL(no tests)" ;;
    *) STATUS[$name]="FAIL(rc=$rc)" ;;
    esac
    if ((rc != 0)); then overall=1; fi
done

# --- summary -------------------------------------------------------------------------------
echo
echo "================================ run_all summary ================================"
printf '%-6s %-26s %-15s %9s %7s  %s\n' "env" "transformer-lens" "status" "install_s" "test_s" "pytest"
for name in "${envs[@]}"; do
    printf '%-6s %-26s %-15s %9s %7s  %s\n' "$name" "$(env_pins "$name" | head -n1)" \
        "${STATUS[$name]}" "${T_INSTALL[$name]}" "${T_TEST[$name]}" "${SUMMARY[$name]}"
done
echo "ruff check: $RUFF_STATUS"
echo "venvs: $VENV_ROOT    total: $((SECONDS - T0))s    result: $([[ $overall == 0 ]] && echo PASS || echo FAIL)"
exit "$overall"
