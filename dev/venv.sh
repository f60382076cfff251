# Sourced by tests/run and demo/run: the checkout's own virtual environment (.venv), made with
# the machine's python3 and holding this checkout (editable) with what the tests need. Nothing
# goes into the system Python (Debian 12 refuses that: externally-managed-environment), and two
# checkouts on one machine never re-point each other's commands. Puts .venv/bin first on PATH,
# so `python3` in every script and test below is this environment's.
# Usage: tm_iscsi_venv EXTRAS   (e.g. "test", or "" for the package alone)
TM_ISCSI_CHECKOUT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tm_iscsi_venv() {
  local extras=$1 venv=$TM_ISCSI_CHECKOUT/.venv stamp want have
  if [ ! -x "$venv/bin/python3" ]; then
    # Debian's python3 has the venv module but not ensurepip until python3-venv is installed.
    if ! python3 -c 'import ensurepip' >/dev/null 2>&1 && command -v apt-get >/dev/null; then
      echo "setting up: installing python3-venv (Debian's venv support)" >&2
      DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv >/dev/null
    fi
    echo "setting up: the checkout's virtual environment $venv (once, about 30 s)" >&2
    python3 -m venv "$venv" || { echo "could not create $venv with python3 -m venv" >&2; return 1; }
  fi
  # Reinstall only when what pip reads changed (pyproject.toml, the extras asked for).
  want="$(sha256sum "$TM_ISCSI_CHECKOUT/pyproject.toml" | cut -d' ' -f1) ${extras}"
  stamp=$venv/.tm_iscsi-installed
  have=$(cat "$stamp" 2>/dev/null || true)
  # Installed with extras already covers the plain package.
  if [ -z "$extras" ] && [ "${have%% *}" = "${want%% *}" ]; then want=$have; fi
  if [ "$have" != "$want" ]; then
    "$venv/bin/python3" -m pip install -q --disable-pip-version-check -e "$TM_ISCSI_CHECKOUT${extras:+[$extras]}" ||
      { echo "pip could not install this checkout into $venv" >&2; return 1; }
    printf '%s\n' "$want" >"$stamp"
  fi
  export PATH="$venv/bin:$PATH"
  export VIRTUAL_ENV=$venv
}
