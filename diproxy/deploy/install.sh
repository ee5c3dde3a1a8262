#!/usr/bin/env bash
# Install the DiStack proxy into a virtualenv with its systemd units (the proxy, and the shipper that publishes its
# metrics to CloudWatch); settings go to the env file.
set -euo pipefail

PROXY_SOURCE="${PROXY_SOURCE:-}"
PROXY_PREFIX="${PROXY_PREFIX:-/opt/di/proxy}"
PROXY_VENV="${PROXY_VENV:-${PROXY_PREFIX}/venv}"
PROXY_ENV_FILE="${PROXY_ENV_FILE:-/etc/di/proxy.env}"
PROXY_UNIT_DIR="${PROXY_UNIT_DIR:-/etc/systemd/system}"
PROXY_PYTHON="${PROXY_PYTHON:-python3}"
PROXY_START="${PROXY_START:-yes}"
# A directory of wheels (the stack's wheelhouse asset, model/wheelhouse.py): pip then takes every file from there and
# reaches no index at all, so a host without the internet installs the proxy. Empty: PyPI, for a manual install.
PROXY_WHEELHOUSE="${PROXY_WHEELHOUSE:-}"
UNITS=(distack-proxy.service distack-proxy-shipper.service)

log() {
    printf 'install-proxy: %s\n' "$*" >&2
}

usage() {
    cat >&2 <<USAGE
usage: install.sh SOURCE
  SOURCE  a directory holding diproxy/ (and diproxy/requirements.lock) or a built wheel (*.whl)
environment: PROXY_PREFIX PROXY_VENV PROXY_ENV_FILE PROXY_UNIT_DIR PROXY_PYTHON PROXY_START=yes|no
             PROXY_WHEELHOUSE=DIR (install the locked dependencies from DIR only, never from an index)
USAGE
}

create_venv() {
    if [[ ! -x "${PROXY_VENV}/bin/python" ]]; then
        log "creating virtualenv ${PROXY_VENV}"
        mkdir -p "$(dirname "${PROXY_VENV}")"
        "${PROXY_PYTHON}" -m venv "${PROXY_VENV}"
    fi
}

install_package() {
    local source="$1"
    if [[ -f "${source}" && "${source}" == *.whl ]]; then
        log "installing wheel ${source}"
        "${PROXY_VENV}/bin/python" -m pip install --quiet "${source}"
    elif [[ -f "${source}/diproxy/requirements.lock" ]]; then
        # The project itself is not a pip package of its own: install the locked deps, then copy the package in.
        # Every file is checked against its hash and only wheels are taken, so nothing is built on the host and
        # a tampered or re-uploaded file fails the install: https://pip.pypa.io/en/stable/topics/secure-installs/
        local index=()
        if [[ -n "${PROXY_WHEELHOUSE}" ]]; then
            [[ -d "${PROXY_WHEELHOUSE}" ]] || { log "no wheelhouse directory ${PROXY_WHEELHOUSE}"; return 1; }
            # --no-index: pip looks nowhere but the wheelhouse (https://pip.pypa.io/en/stable/cli/pip_install/#install-no-index);
            # the hashes are still the lock's, so a wheel changed in the asset fails here as it would from PyPI.
            index=(--no-index --find-links "${PROXY_WHEELHOUSE}")
            log "installing diproxy from ${source} with the wheels in ${PROXY_WHEELHOUSE} (no index)"
        else
            log "installing diproxy from ${source} (dependencies from the package index)"
        fi
        "${PROXY_VENV}/bin/python" -m pip install --quiet --disable-pip-version-check "${index[@]}" --require-hashes \
            --only-binary :all: -r "${source}/diproxy/requirements.lock"
        local site
        site="$("${PROXY_VENV}/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        rm -rf "${site}/diproxy"
        cp -r "${source}/diproxy" "${site}/diproxy"
        find "${site}/diproxy" -name '__pycache__' -type d -prune -exec rm -rf {} +
    else
        log "no wheel and no diproxy/requirements.lock under ${source}"
        return 1
    fi
    "${PROXY_VENV}/bin/python" -c 'import diproxy' || { log "diproxy does not import"; return 1; }
}

install_units() {
    local source="$1"
    local deploy name unit
    deploy="$("${PROXY_VENV}/bin/python" -c 'import diproxy, pathlib; print(pathlib.Path(diproxy.__file__).parent / "deploy")')"
    for name in "${UNITS[@]}"; do
        unit="${deploy}/${name}"
        # A wheel may leave out non-Python files; a source directory always has the units.
        [[ -f "${unit}" ]] || unit="${source}/diproxy/deploy/${name}"
        install -D -m 0644 "${unit}" "${PROXY_UNIT_DIR}/${name}"
    done
    if [[ ! -f "${PROXY_ENV_FILE}" ]]; then
        log "writing default ${PROXY_ENV_FILE}; edit it, then restart distack-proxy"
        install -d -m 0755 "$(dirname "${PROXY_ENV_FILE}")"
        printf 'DIPROXY_MODE=di\nDIPROXY_ETCD=127.0.0.1:8989\nDIPROXY_PORT=8000\n' >"${PROXY_ENV_FILE}"
    fi
}

start_service() {
    if [[ "${PROXY_START}" != "yes" ]] || ! command -v systemctl >/dev/null 2>&1; then
        log "not starting the service (PROXY_START=${PROXY_START})"
        return 0
    fi
    systemctl daemon-reload
    systemctl enable "${UNITS[@]}"
    systemctl restart "${UNITS[@]}"
}

main() {
    PROXY_SOURCE="${1:-${PROXY_SOURCE}}"
    if [[ -z "${PROXY_SOURCE}" ]]; then
        usage
        return 2
    fi
    create_venv
    install_package "${PROXY_SOURCE}"
    install_units "${PROXY_SOURCE}"
    start_service
    log "done: ${PROXY_VENV}"
}

if [[ "${BASH_SOURCE[0]}" == "${0}" ]]; then
    main "$@"
fi
