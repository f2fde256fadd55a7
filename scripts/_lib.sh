# shellcheck shell=bash
# Shared helpers for tickmesh's scripts: source this file, do not run it.
#
# Provides:
#   tm_root          absolute path of the repository root, whatever the caller's cwd
#   ensure_apt PKG…  install missing Debian packages (as root) or say how to (otherwise)
#   ensure_venv      create $tm_root/.venv and install the project into it when needed;
#                    sets PY to the venv's python
#   ensure_web       install web/'s npm packages when needed (npm ci) and vendor Lightweight
#                    Charts into web/vendor/ (nothing third-party is committed)
#
# Callers run with `set -euo pipefail`, so everything here must be safe under it.

if [[ -n "${_TM_LIB_SOURCED:-}" ]]; then
    return 0
fi
_TM_LIB_SOURCED=1

tm_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
PY="$tm_root/.venv/bin/python"

_tm_err() {
    printf 'tickmesh: %s\n' "$*" >&2
}

# The binary that proves a Debian package is installed. Packages not listed provide a binary
# of their own name.
_tm_pkg_binary() {
    case "$1" in
        redis-server) echo redis-server ;;
        redis-sentinel) echo redis-sentinel ;;
        clickhouse-server) echo clickhouse-server ;;
        nodejs) echo node ;;
        *) echo "$1" ;;
    esac
}

# True when the binary is reachable. /usr/sbin and /usr/bin are checked as well because a
# non-login root shell (CI, sudo) may not have them on PATH although apt installed there.
_tm_have_binary() {
    local bin="$1"
    command -v "$bin" >/dev/null 2>&1 || [[ -x "/usr/sbin/$bin" || -x "/usr/bin/$bin" ]]
}

ensure_apt() {
    local pkg
    local -a missing=()
    for pkg in "$@"; do
        if ! _tm_have_binary "$(_tm_pkg_binary "$pkg")"; then
            missing+=("$pkg")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    if [[ "$(id -u)" != 0 ]]; then
        _tm_err "missing Debian packages: ${missing[*]}. Install them with: sudo apt-get install -y ${missing[*]}"
        exit 1
    fi
    echo "tickmesh: installing Debian packages: ${missing[*]}" >&2
    if [[ -z "${_TM_APT_UPDATED:-}" ]]; then
        apt-get update -qq
        _TM_APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

_tm_sha256() {
    sha256sum "$1" | cut -d' ' -f1
}

ensure_venv() {
    local venv="$tm_root/.venv"
    local stamp="$venv/.tickmesh-installed"
    if [[ ! -x "$venv/bin/python" ]]; then
        if ! command -v python3 >/dev/null 2>&1; then
            _tm_err "python3 not found: install Python 3.11 or newer"
            exit 1
        fi
        if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            _tm_err "python3 is $(python3 -c 'import platform; print(platform.python_version())'); tickmesh needs Python 3.11 or newer"
            exit 1
        fi
        echo "tickmesh: creating $venv" >&2
        python3 -m venv "$venv"
    fi
    PY="$venv/bin/python"
    # Reinstall only when the dependency list may have changed: the stamp holds the hash of
    # the pyproject.toml that was last installed successfully.
    local want have=""
    want="$(_tm_sha256 "$tm_root/pyproject.toml")"
    if [[ -f "$stamp" ]]; then
        have="$(<"$stamp")"
    fi
    if [[ "$want" != "$have" ]]; then
        echo "tickmesh: installing the project and its test dependencies into $venv" >&2
        "$PY" -m pip install -q -e "${tm_root}[test]"
        printf '%s\n' "$want" >"$stamp"
    fi
}

# web/node_modules is refreshed when missing or older than web/package-lock.json; the two
# Lightweight Charts builds the page loads are copied to web/vendor/ every time (cheap), so a
# vendor folder from another version never outlives an npm ci.
ensure_web() {
    local web="$tm_root/web"
    local dist="$web/node_modules/lightweight-charts/dist"
    ensure_apt nodejs npm  # node and npm: on PATH already on these machines (node 20)
    if [[ ! -d "$web/node_modules" || "$web/package-lock.json" -nt "$web/node_modules" ]]; then
        echo "tickmesh: installing the web client's npm packages into $web/node_modules" >&2
        (cd "$web" && npm ci --no-audit --no-fund --loglevel=error)
        touch "$web/node_modules"
    fi
    mkdir -p "$web/vendor"
    cp "$dist/lightweight-charts.standalone.production.js" \
        "$dist/lightweight-charts.standalone.development.js" "$web/vendor/"
}
