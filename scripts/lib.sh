# Shell functions shared by scripts/test.sh and scripts/run.sh. Source it; it runs nothing itself.
# The sourcing script defines `die MESSAGE` (print and exit 1).

# pg_query (the policy crate's PostgreSQL parser) generates its bindings with bindgen at build time,
# which loads libclang; a fresh Debian/Ubuntu machine has gcc but not libclang, and the build then
# stops with "Unable to find libclang".
BUILD_PACKAGES=(libclang1-14 libclang-common-14-dev)

# ensure_apt_packages LABEL WHY PACKAGE...
# Installs the Debian packages among PACKAGE... that are not installed, with apt-get (through sudo
# when not root), refreshing the package lists only if the first attempt fails. LABEL names the set
# in the progress line ("build packages: LABEL present"); WHY ends the error message.
ensure_apt_packages() {
    local label=$1 why=$2
    shift 2
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        echo "build packages: $label present"
        return
    fi
    echo "build packages: installing ${missing[*]}"
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null 2>&1 ||
            die "${missing[*]} missing and not root: install them as root (apt-get install ${missing[*]}) $why"
        sudo=(sudo)
    fi
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; then
        "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 || true
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
            die "apt-get could not install ${missing[*]} $why"
    fi
}
