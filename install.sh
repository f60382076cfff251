#!/usr/bin/env bash
# install.sh: put tm_iscsi on an OpenNebula front-end, the storage node and every hypervisor host.
#
# Every file it writes is rendered from one site file (conf/, tm_iscsi/config_render.py). Each step
# first looks at what is there and changes only what differs, so a second run changes nothing and
# says so; --dry-run prints every change it would make and makes none. It never edits oned.conf by
# itself: it prints the registration, and applies it through `onecfg patch` only with
# --apply-oned. A disk given with --device is used only when it holds nothing.
set -euo pipefail

PROG=install.sh
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() {
  cat <<'EOF'
Usage: install.sh --role ROLE[,ROLE...] --site FILE [options]

Roles (repeat --role or give a comma list; one machine may have several):
  frontend   the oned host: the Python package, the admin tools on PATH (/usr/local/bin), the
             iscsi_lvm remotes, /etc/one/tm_iscsi.conf, TM_ISCSI_PYTHON in /etc/one/defaultrc,
             the oned.conf and vmm_execrc registration (printed; applied with --apply-oned)
  storage    the storage node: image VG and thin pool on --device, LIO restore at boot, the node
             helper with its sudoers rule, the LVM filter
  host       a hypervisor host: initiator name, iscsid settings, local cache VG on --device,
             boot-time activation, the node helper with its sudoers rule, the LVM filter

Options:
  --site FILE          the site file (INI, see conf/site.example.ini)
  --render DIR         only render every file from the site file into DIR, to read them first
                       (conf/README.md says what each becomes); changes nothing else
  --rendered DIR       use files rendered before (tm_iscsi.config_render --out DIR) instead of
                       rendering here: for a node without Jinja2
  --device DEV         the disk for the image VG (storage) or the cache VG (host); it must be
                       listed in the site file and hold nothing
  --cache-device DEV   the cache disk when one machine is both storage and host
  --dry-run            print every change it would make, change nothing
  --apply-oned         register iscsi_lvm in oned.conf and vmm_execrc with `onecfg patch` (else
                       only printed)
  --one-location DIR   a self-contained OpenNebula (its ONE_LOCATION; also the ONE_LOCATION
                       variable): DIR/etc and DIR/var/remotes instead of /etc/one and
                       /var/lib/one/remotes
  --uninstall          remove what install.sh put there for the roles named (with --dry-run:
                       show it); VGs, LVs and images are kept
  --remove-data        with --uninstall: also remove the role's VG (host: the cache VG, when no
                       stack uses it; storage: the image VG, only when it holds no LV but the
                       thin pool)
  --root DIR           prefix for every file it reads or writes (tests, image builds);
                       also TM_ISCSI_ROOT
  --skip STEP[,STEP]   leave steps out: packages (also TM_ISCSI_NO_PACKAGES=1, which also keeps
                       pip away from package indexes), python
  --wheel FILE         install tm_iscsi from this wheel instead of this checkout
  --wheelhouse DIR     take tm_iscsi's dependencies from this directory, not from PyPI
  -h, --help           this text
EOF
}

# -- output ------------------------------------------------------------------------------------

die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }
refuse() { printf '%s: refusing: %s\n' "$PROG" "$*" >&2; exit 1; }
step() { printf '== %s\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }
note() { printf '   note: %s\n' "$*"; }
indent() { sed 's/^/      /'; }

quote_cmd() {
  local out='' word
  for word in "$@"; do out+="${out:+ }$(printf '%q' "$word")"; done
  printf '%s' "$out"
}

CHANGES=0
# change DESCRIPTION [COMMAND ARGS...]: the one place that changes the machine. In a dry run it
# only says what it would do (and the command it would run).
change() {
  local desc=$1
  shift
  CHANGES=$((CHANGES + 1))
  if ((DRY_RUN)); then
    printf '   would: %s\n' "$desc"
    # The command, when it is one a reader can run; install.sh's own functions explain
    # themselves (the diff that follows).
    if (($#)) && [ "$(type -t "$1")" = file ]; then printf '      $ %s\n' "$(quote_cmd "$@")"; fi
    return 0
  fi
  printf '   change: %s\n' "$desc"
  if (($#)); then "$@"; fi
}

# -- options -----------------------------------------------------------------------------------

ROLES=()
SITE=''
RENDERED=''
RENDER_ONLY=''
DEVICE=''
CACHE_DEVICE=''
DRY_RUN=0
APPLY_ONED=0
UNINSTALL=0
REMOVE_DATA=0
ONE_LOCATION=${ONE_LOCATION:-}
ROOT=${TM_ISCSI_ROOT:-}
WHEEL=''
WHEELHOUSE=''
SKIP=()
NO_PACKAGES=0
[ "${TM_ISCSI_NO_PACKAGES:-0}" = 1 ] && NO_PACKAGES=1

need_arg() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi; }

while [ $# -gt 0 ]; do
  case $1 in
    --role) need_arg "$@"; IFS=, read -r -a more <<<"$2"; ROLES+=("${more[@]}"); shift 2 ;;
    --role=*) IFS=, read -r -a more <<<"${1#*=}"; ROLES+=("${more[@]}"); shift ;;
    --site) need_arg "$@"; SITE=$2; shift 2 ;;
    --rendered) need_arg "$@"; RENDERED=$2; shift 2 ;;
    --render) need_arg "$@"; RENDER_ONLY=$2; shift 2 ;;
    --device) need_arg "$@"; DEVICE=$2; shift 2 ;;
    --cache-device) need_arg "$@"; CACHE_DEVICE=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --apply-oned) APPLY_ONED=1; shift ;;
    --uninstall) UNINSTALL=1; shift ;;
    --remove-data) REMOVE_DATA=1; shift ;;
    --one-location) need_arg "$@"; ONE_LOCATION=$2; shift 2 ;;
    --root) need_arg "$@"; ROOT=$2; shift 2 ;;
    --skip) need_arg "$@"; IFS=, read -r -a more <<<"$2"; SKIP+=("${more[@]}"); shift 2 ;;
    --wheel) need_arg "$@"; WHEEL=$2; shift 2 ;;
    --wheelhouse) need_arg "$@"; WHEELHOUSE=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

HAS_FRONTEND=0 HAS_STORAGE=0 HAS_HOST=0
for role in "${ROLES[@]}"; do
  case $role in
    frontend) HAS_FRONTEND=1 ;;
    storage) HAS_STORAGE=1 ;;
    host) HAS_HOST=1 ;;
    '') ;;
    *) die "unknown role '$role': use frontend, storage or host" ;;
  esac
done
if [ -n "$RENDER_ONLY" ]; then
  [ -n "$SITE" ] || die "--render needs --site FILE"
  [ -f "$SITE" ] || die "--site $SITE: no such file"
  PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}" "${TM_ISCSI_RENDER_PYTHON:-python3}" -c 'import jinja2' 2>/dev/null ||
    die "Jinja2 is missing: install python3-jinja2 (apt-get install python3-jinja2), then re-run"
  exec env PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}" "${TM_ISCSI_RENDER_PYTHON:-python3}" \
    -m tm_iscsi.config_render render --site "$SITE" --out "$RENDER_ONLY" --templates "$SRC/conf"
fi
((HAS_FRONTEND + HAS_STORAGE + HAS_HOST)) || { usage >&2; die "name at least one --role"; }
[ -n "$SITE" ] || [ -n "$RENDERED" ] || die "--site FILE is required (or --rendered DIR)"
for skipped in "${SKIP[@]}"; do
  case $skipped in packages) NO_PACKAGES=1 ;; python) ;; *) die "--skip: unknown step '$skipped'" ;; esac
done
skipping() { local s; for s in "${SKIP[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
if [ -n "$ROOT" ]; then
  ROOT=$(cd "$ROOT" 2>/dev/null && pwd) || die "--root: no such directory"
  [ "$ROOT" = / ] && ROOT=''
fi
if ((HAS_STORAGE && HAS_HOST)); then
  STORAGE_DEVICE=$DEVICE HOST_DEVICE=$CACHE_DEVICE
else
  STORAGE_DEVICE=$DEVICE HOST_DEVICE=$DEVICE
  [ -z "$CACHE_DEVICE" ] || die "--cache-device is for a machine that is both storage and host"
fi
((REMOVE_DATA)) && ! ((UNINSTALL)) && die "--remove-data goes with --uninstall"
# OpenNebula's own layout: system-wide, or self-contained under ONE_LOCATION.
if [ -n "$ONE_LOCATION" ]; then
  case $ONE_LOCATION in /*) ;; *) die "--one-location must be an absolute path" ;; esac
  ONE_ETC=${ONE_LOCATION%/}/etc ONE_REMOTES=${ONE_LOCATION%/}/var/remotes
else
  ONE_ETC=/etc/one ONE_REMOTES=/var/lib/one/remotes
fi
# The admin tools go where an administrator's PATH has them.
BIN_DIR=/usr/local/bin
ADMIN_TOOLS=(tm-iscsi tm-iscsi-hook tm-iscsi-config)
if ((!DRY_RUN)) && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
  die "run as root (or try --dry-run)"
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tm_iscsi-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# A path on the machine being installed (under --root when given).
path() { printf '%s%s' "$ROOT" "$1"; }
have() { command -v "$1" >/dev/null 2>&1; }
# systemctl acts on the running system only: not under --root, not without systemd.
systemd_running() { [ -z "$ROOT" ] && [ -d /run/systemd/system ] && have systemctl; }

# enable_unit UNIT SINCE [--now]: systemd reloaded if a unit file changed since $CHANGES was
# SINCE, then UNIT enabled (and started, with --now).
enable_unit() {
  local unit=$1 since=$2 now=${3:-}
  if [ "$CHANGES" != "$since" ]; then change "reload systemd" systemctl daemon-reload; fi
  if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
    ok "$unit enabled"
  else
    change "enable $unit" systemctl enable --quiet $now "$unit"
  fi
}
user_exists() {
  if [ -n "$ROOT" ]; then grep -q "^$1:" "$(path /etc/passwd)" 2>/dev/null; else id -u "$1" >/dev/null 2>&1; fi
}

# -- files -------------------------------------------------------------------------------------

# put_file SRC DEST MODE OWNER GROUP: replace DEST atomically.
put_file() {
  local src=$1 dest=$2 mode=$3 owner=$4 group=$5 tmp
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp "$dest.tm_iscsi.XXXXXX")
  cat "$src" >"$tmp"
  chmod "$mode" "$tmp"
  chown "$owner:$group" "$tmp"
  mv -f "$tmp" "$dest"
}

same_file() { # same_file SRC DEST MODE OWNER GROUP
  [ -f "$2" ] && [ ! -L "$2" ] && cmp -s "$1" "$2" &&
    [ "$(stat -c '%a %U %G' "$2")" = "$3 $4 $5" ]
}

# A secret never reaches the terminal or a log: its value is shown as ****.
mask_secrets() { sed -E 's/((CHAP_PASSWORD|chap_password)[[:space:]]*=[[:space:]]*"?)[^"[:space:]]+/\1****/g'; }

show_diff() { # show_diff OLD NEW: what a write would change, in a dry run
  ((DRY_RUN)) || return 0
  if [ -f "$1" ]; then diff -u "$1" "$2" | tail -n +3 | mask_secrets | indent || true
  else mask_secrets <"$2" | indent; fi
}

# install_file SRC DEST MODE OWNER GROUP
install_file() {
  local src=$1 dest_name=$2 mode=$3 owner=$4 group=$5 dest
  dest=$(path "$dest_name")
  if same_file "$src" "$dest" "$mode" "$owner" "$group"; then
    ok "$dest_name unchanged"
    return 0
  fi
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
    change "set $dest_name to mode $mode, owner $owner:$group" put_file "$src" "$dest" "$mode" "$owner" "$group"
  else
    change "write $dest_name (mode $mode, $owner:$group)" put_file "$src" "$dest" "$mode" "$owner" "$group"
    show_diff "$dest" "$src"
  fi
}

BLOCK_BEGIN='# BEGIN tm_iscsi (managed by install.sh: change the site file and re-run it)'
BLOCK_END='# END tm_iscsi'

# strip_block FILE: FILE without our managed block.
strip_block() {
  [ -f "$1" ] || return 0
  awk -v b="$BLOCK_BEGIN" -v e="$BLOCK_END" '
    $0 == b { inside = 1; next }
    inside && $0 == e { inside = 0; next }
    !inside' "$1"
}

# ensure_block FILE BLOCK [CONFLICT_ERE]: FILE ends with BLOCK, once. Lines outside the block
# matching CONFLICT_ERE mean the administrator set the same thing: refuse rather than fight it.
ensure_block() {
  local name=$1 block=$2 conflict=${3:-} file new mode=644 owner=root group=root
  file=$(path "$name")
  new=$WORK/block.$RANDOM
  strip_block "$file" >"$new.outside"
  if [ -n "$conflict" ] && grep -Eq "$conflict" "$new.outside"; then
    refuse "$name already sets what tm_iscsi needs to set (lines matching '$conflict' outside its block); merge them into the site file's values, or remove them"
  fi
  cp "$new.outside" "$new"
  if [ -s "$new" ] && [ -n "$(tail -c 1 "$new")" ]; then echo >>"$new"; fi
  cat "$block" >>"$new"
  if [ -f "$file" ]; then
    read -r mode owner group <<<"$(stat -c '%a %U %G' "$file")"
    if cmp -s "$new" "$file"; then
      ok "$name has the tm_iscsi block"
      return 0
    fi
  fi
  change "update the tm_iscsi block in $name" put_file "$new" "$file" "$mode" "$owner" "$group"
  show_diff "$file" "$new"
}

# tree_listing DIR: names, types, modes, link targets and owners of a tree, one per line.
tree_listing() { (cd "$1" && find . -mindepth 1 -printf '%y %m %u %P -> %l\n' | LC_ALL=C sort); }

# sync_tree SRC DEST OWNER: DEST becomes a copy of SRC. SRC holds no symlink: onecfg refuses any
# under /etc/one or the remotes tree.
sync_tree() {
  local src=$1 dest_name=$2 owner=$3 dest
  dest=$(path "$dest_name")
  (cd "$src" && find . -mindepth 1 -printf '%y %m OWNER %P -> %l\n' | LC_ALL=C sort) |
    sed "s/ OWNER / $owner /" >"$WORK/want.list"
  if [ -d "$dest" ] && tree_listing "$dest" | cmp -s - "$WORK/want.list" &&
    diff -r --no-dereference "$src" "$dest" >/dev/null 2>&1; then
    ok "$dest_name unchanged"
    return 0
  fi
  change "install $dest_name (from ${src#"$SRC"/}, owner $owner)" replace_tree "$src" "$dest" "$owner"
}

replace_tree() {
  local src=$1 dest=$2 owner=$3
  mkdir -p "$(dirname "$dest")"
  rm -rf "$dest.tm_iscsi-new" "$dest.tm_iscsi-old"
  cp -R -P --preserve=mode,links "$src" "$dest.tm_iscsi-new"
  chown -R -h "$owner:$(id -gn "$owner" 2>/dev/null || echo "$owner")" "$dest.tm_iscsi-new"
  if [ -e "$dest" ]; then mv "$dest" "$dest.tm_iscsi-old"; fi
  mv "$dest.tm_iscsi-new" "$dest"
  rm -rf "$dest.tm_iscsi-old"
}

# -- render ------------------------------------------------------------------------------------

render_python() {
  local py
  for py in "${TM_ISCSI_RENDER_PYTHON:-}" "$(path /opt/tm_iscsi-venv)/bin/python" python3; do
    [ -n "$py" ] || continue
    if have "$py" && "$py" -c 'import jinja2' >/dev/null 2>&1; then
      printf '%s' "$py"
      return 0
    fi
  done
  return 1
}

# Run tm_iscsi.config_render from this checkout.
config_render() {
  local py
  py=$(render_python) || py=python3
  PYTHONPATH="$SRC${PYTHONPATH:+:$PYTHONPATH}" "$py" -m tm_iscsi.config_render "$@"
}

CONF=''
step_render() {
  step "configuration files"
  if [ -n "$RENDERED" ]; then
    [ -f "$RENDERED/install.env" ] || die "--rendered $RENDERED: no install.env (render with tm_iscsi.config_render --out)"
    CONF=$RENDERED
    ok "using the files rendered in $RENDERED"
    return 0
  fi
  [ -f "$SITE" ] || die "--site $SITE: no such file"
  render_python >/dev/null ||
    die "Jinja2 is missing, so the files cannot be rendered here: install python3-jinja2, or render on the front-end (python3 -m tm_iscsi.config_render --site SITE --out DIR) and pass --rendered DIR"
  CONF=$WORK/conf
  local args=(render --site "$SITE" --out "$CONF" --templates "$SRC/conf")
  if ((HAS_FRONTEND)) && [ -f "$(path "$ONE_ETC/oned.conf")" ]; then
    # Extend the driver lists this oned.conf really has, not the stock ones.
    args+=(--oned-conf "$(path "$ONE_ETC/oned.conf")")
  fi
  if ((HAS_FRONTEND)) && [ -f "$(path "$ONE_ETC/vmm_exec/vmm_execrc")" ]; then
    # Extend the live-snapshot pairs this vmm_execrc really lists.
    args+=(--vmm-execrc "$(path "$ONE_ETC/vmm_exec/vmm_execrc")")
  fi
  config_render "${args[@]}" >/dev/null || die "rendering from $SITE failed (see above)"
  ok "rendered from $SITE"
}

# install.env: plain KEY=VALUE lines, read without eval into E_<KEY>.
read_install_env() {
  local line key value file=$CONF/install.env
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in '' | '#'*) continue ;; esac
    key=${line%%=*}
    value=${line#*=}
    case $key in
      SITE_FILE | ONEADMIN | VENV | HELPER | DATASTORES | STORAGE_VG | THIN_POOL | POOL_PERCENT | \
        STORAGE_DEVICES | CACHE_VG | HOST_DEVICES | SYSTEM_DEVICES | INITIATOR_PREFIX | \
        LVM_FILTER_STORAGE | LVM_FILTER_HOST | LVM_FILTER_STORAGE_HOST)
        printf -v "E_$key" '%s' "$value" ;;
      *) die "$file: unexpected line for $key" ;;
    esac
  done <"$file"
  for key in ONEADMIN VENV HELPER DATASTORES STORAGE_VG THIN_POOL POOL_PERCENT CACHE_VG INITIATOR_PREFIX; do
    value=E_$key
    [ -n "${!value:-}" ] || die "$file: $key is missing"
  done
}

# -- packages ----------------------------------------------------------------------------------

PKG_FAMILY=''
detect_packaging() {
  if have apt-get && have dpkg-query; then PKG_FAMILY=deb
  elif have dnf; then PKG_FAMILY=dnf
  elif have yum; then PKG_FAMILY=yum
  else PKG_FAMILY=''
  fi
}

package_installed() {
  case $PKG_FAMILY in
    deb) dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed' ;;
    *) rpm -q "$1" >/dev/null 2>&1 ;;
  esac
}

wanted_packages() {
  local deb=() rpm=()
  deb+=(python3 python3-venv python3-jinja2)
  rpm+=(python3 python3-jinja2)
  if ((HAS_FRONTEND)); then deb+=(genisoimage openssh-client); rpm+=(xorriso openssh-clients); fi
  if ((HAS_STORAGE || HAS_HOST)); then
    deb+=(sudo lvm2 thin-provisioning-tools util-linux)
    rpm+=(sudo lvm2 device-mapper-persistent-data util-linux)
  fi
  if ((HAS_STORAGE)); then
    # fdisk (sfdisk), e2fsprogs, xfsprogs: image extract / overlay read partition tables and
    # mount ext4 and xfs.
    deb+=(targetcli-fb python3-rtslib-fb qemu-utils fdisk e2fsprogs xfsprogs)
    rpm+=(targetcli python3-rtslib qemu-img e2fsprogs xfsprogs)
  fi
  # qemu-img / qemu-io write a backup's qcow2 files on the host (prebackup).
  if ((HAS_HOST)); then deb+=(open-iscsi qemu-utils); rpm+=(iscsi-initiator-utils qemu-img); fi
  if [ "$PKG_FAMILY" = deb ]; then printf '%s\n' "${deb[@]}"; else printf '%s\n' "${rpm[@]}"; fi
}

step_packages() {
  step "distribution packages"
  if ((NO_PACKAGES)); then
    note "skipped (TM_ISCSI_NO_PACKAGES=1 or --skip packages): using what is installed"
    return 0
  fi
  if [ -n "$ROOT" ]; then
    note "skipped under --root: packages go to the running system only"
    return 0
  fi
  detect_packaging
  [ -n "$PKG_FAMILY" ] || die "neither apt-get nor dnf/yum found: install the packages by hand and use --skip packages"
  local missing=() pkg
  # Here-strings, not process substitution: a minimal node may have no /dev/fd.
  while read -r pkg; do package_installed "$pkg" || missing+=("$pkg"); done <<<"$(wanted_packages)"
  if [ ${#missing[@]} = 0 ]; then
    ok "all installed"
    return 0
  fi
  case $PKG_FAMILY in
    deb)
      # A fresh cloud image comes with empty package lists: apt-get install would find nothing.
      change "refresh the package lists (apt-get update)" env DEBIAN_FRONTEND=noninteractive apt-get update -q
      change "install ${missing[*]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" ;;
    *) change "install ${missing[*]}" "$PKG_FAMILY" install -y -q "${missing[@]}" ;;
  esac
}

# -- the Python package ------------------------------------------------------------------------

# The source pip installs from: a copy of the package's files (pip would write build files into
# the checkout), or the wheel. Its hash says whether the virtualenv already has exactly it.
python_source() {
  if [ -n "$WHEEL" ]; then
    [ -f "$WHEEL" ] || die "--wheel $WHEEL: no such file"
    printf '%s\n' "$WHEEL"
    sha256sum "$WHEEL" | cut -d' ' -f1
    return 0
  fi
  local stage=$WORK/source item
  mkdir -p "$stage"
  for item in pyproject.toml README.md tm_iscsi dmcache vmm_hooks conf remotes; do
    [ -e "$SRC/$item" ] && cp -R "$SRC/$item" "$stage/"
  done
  find "$stage" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +
  printf '%s\n' "$stage"
  (cd "$stage" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}

pip_install() {
  local venv=$1 source=$2 hash=$3 args
  args=(install --quiet --disable-pip-version-check --upgrade --force-reinstall)
  if [ -n "$WHEELHOUSE" ]; then
    args+=(--no-index --find-links "$WHEELHOUSE")
  elif ((NO_PACKAGES)); then
    # No package index: the node has the dependencies already (the distribution's, through
    # --system-site-packages, or earlier installs).
    args+=(--no-index --no-deps --no-build-isolation)
  fi
  if ! "$venv/bin/python" -m pip "${args[@]}" "$source"; then
    ((NO_PACKAGES)) && [ -z "$WHEEL" ] &&
      die "pip could not build tm_iscsi here without a package index (it needs the wheel package for that): build a wheel where PyPI is reachable (python3 -m pip wheel --no-deps -w DIR $SRC) and pass --wheel"
    die "pip could not install tm_iscsi into $venv"
  fi
  printf '%s\n' "$hash" >"$venv/.tm_iscsi-source"
}

step_python() {
  step "tm_iscsi Python package"
  if skipping python; then
    note "skipped (--skip python)"
    return 0
  fi
  local venv source hash info
  venv=$(path "$E_VENV")
  info=$(python_source)
  source=$(sed -n 1p <<<"$info")
  hash=$(sed -n 2p <<<"$info")
  if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.tm_iscsi-source" 2>/dev/null)" = "$hash" ] &&
    "$venv/bin/python" -c 'import tm_iscsi' >/dev/null 2>&1; then
    ok "$E_VENV has this tm_iscsi"
  else
    if [ ! -x "$venv/bin/python" ]; then
      # System site-packages: rtslib-fb comes from the distribution on the storage node.
      change "create the virtualenv $E_VENV" python3 -m venv --system-site-packages "$venv"
    elif ! grep -qi '^include-system-site-packages *= *true' "$venv/pyvenv.cfg" 2>/dev/null; then
      note "$E_VENV does not see the system site-packages: rtslib-fb will be missing on a storage node"
    fi
    change "install tm_iscsi into $E_VENV (from ${WHEEL:-this checkout})" pip_install "$venv" "$source" "$hash"
  fi
  if ((HAS_STORAGE || HAS_HOST)) && [ -d "$venv" ]; then
    # sudo runs this code as root for oneadmin: nobody else may be able to change it.
    local loose
    loose=$(find "$venv" \( ! -user root -o -perm -g+w -o -perm -o+w \) ! -type l -print -quit)
    [ -z "$loose" ] || ((DRY_RUN)) ||
      refuse "$E_VENV is not root's alone ($loose): code sudo runs as root must not be writable by others"
  fi
}

# -- nodes: helper, sudoers, node.conf, LVM filter ---------------------------------------------

role_key() {
  if ((HAS_STORAGE && HAS_HOST)); then echo storage-host
  elif ((HAS_STORAGE)); then echo storage
  else echo host
  fi
}

step_oneadmin() {
  step "user $E_ONEADMIN"
  if user_exists "$E_ONEADMIN"; then
    ok "exists"
  elif ((HAS_HOST)); then
    # OpenNebula's node package creates it with the uid the front-end expects.
    note "$E_ONEADMIN does not exist yet: install OpenNebula's node package (opennebula-node-kvm), which creates it"
  else
    change "create the system user $E_ONEADMIN (the front-end logs in as it)" \
      useradd ${ROOT:+--root "$ROOT"} --system --create-home --home-dir /var/lib/one --shell /bin/bash "$E_ONEADMIN"
    note "authorize the front-end's SSH key in ~$E_ONEADMIN/.ssh/authorized_keys"
  fi
}

step_helper() {
  step "node helper $E_HELPER"
  install_file "$CONF/node/tm-iscsi-node" "$E_HELPER" 755 root root
  install_file "$CONF/node/$(role_key).conf" /etc/tm_iscsi/node.conf 644 root root
}

step_sudoers() {
  step "sudoers"
  local rule=$WORK/sudoers
  cp "$CONF/sudoers/tm_iscsi" "$rule"
  chmod 440 "$rule"
  if have visudo; then
    visudo -cf "$rule" >/dev/null || die "visudo rejects the rendered sudoers rule"
  else
    note "visudo not found (sudo is not installed): the rule is written, but nothing uses it until sudo is"
  fi
  if [ ! -d "$(path /etc/sudoers.d)" ]; then
    change "create /etc/sudoers.d" install -d -m 750 "$(path /etc/sudoers.d)"
  fi
  install_file "$rule" /etc/sudoers.d/tm_iscsi 440 root root
  if [ -f "$(path /etc/sudoers)" ] && ! grep -Eq '^[#@]includedir[[:space:]]+/etc/sudoers\.d' "$(path /etc/sudoers)"; then
    note "/etc/sudoers does not include /etc/sudoers.d: add '@includedir /etc/sudoers.d' with visudo"
  fi
}

lvm_usable() { have pvs && [ -z "$ROOT" ]; }

# PVs LVM sees now that the new filter would hide, other than iSCSI disks and device-mapper
# devices (hiding those is the point).
hidden_pvs() {
  local filter=$1 pv vg name sys
  pvs --noheadings -o pv_name,vg_name --config "devices { global_filter = $filter }" 2>/dev/null |
    awk '{print $1}' | sort >"$WORK/pvs.after" || true
  while read -r pv vg; do
    [ -n "$pv" ] || continue
    grep -qxF "$pv" "$WORK/pvs.after" && continue
    name=$(basename "$(readlink -f "$pv")")
    case $name in dm-*) continue ;; esac
    sys=$(readlink -f "/sys/class/block/$name" 2>/dev/null || true)
    case $sys in */session[0-9]*) continue ;; esac
    printf '%s (VG %s)\n' "$pv" "${vg:-none}"
  done <<<"$(pvs --noheadings -o pv_name,vg_name 2>/dev/null || true)"
}

lvm_filter_of_roles() {
  local filter_var
  filter_var=E_LVM_FILTER_$(role_key | tr a-z- A-Z_)
  printf '%s' "${!filter_var}"
}

# Part of the preflight: a VG the node uses now must not vanish behind the new filter (at the
# next boot, a root VG would).
check_lvm_filter() {
  local hidden
  lvm_usable || return 0
  hidden=$(hidden_pvs "$(lvm_filter_of_roles)")
  [ -z "$hidden" ] ||
    refuse "the LVM filter would hide PVs this node uses now: $(tr '\n' ' ' <<<"$hidden")- list them in [lvm] system_devices of the site file"
}

step_lvm_filter() {
  step "LVM filter"
  if lvm_usable; then
    ok "hides no PV this node uses now"
  else
    note "LVM tools not usable here: not checking which PVs the filter would hide"
  fi
  ensure_block /etc/lvm/lvmlocal.conf "$CONF/lvm/$(role_key).block" '^[[:space:]]*devices[[:space:]]*\{'
}

# -- disks -------------------------------------------------------------------------------------

in_list() { # in_list DEVICE LIST: DEVICE (or what it resolves to) is one of LIST
  local want item
  want=$(readlink -f "$1" 2>/dev/null || printf '%s' "$1")
  for item in $2; do
    [ "$item" = "$1" ] && return 0
    [ "$(readlink -f "$item" 2>/dev/null || printf '%s' "$item")" = "$want" ] && return 0
  done
  return 1
}

# check_blank DEVICE VG LIST WHAT [nolist]: refuse unless DEVICE holds nothing (an empty PV, or
# one of VG, is fine), is a block device, is not in use, and is one of the site's devices for
# the role (not checked with nolist, before the site file is read).
check_blank() {
  local dev=$1 vg=$2 list=$3 what=$4 nolist=${5:-} types owner name holders
  [ -e "$dev" ] || refuse "$dev does not exist"
  # Data first, whatever the path is: a signature means someone's data.
  if [ -n "$(blkid -p -o value -s PTTYPE "$dev" 2>/dev/null || true)" ]; then
    refuse "$dev holds a partition table ($(blkid -p -o value -s PTTYPE "$dev")); tm_iscsi uses whole, blank disks only: wipe it yourself (wipefs -a $dev) if its data is disposable"
  fi
  types=$( { blkid -p -o value -s TYPE "$dev" 2>/dev/null || true; wipefs --noheadings --output TYPE "$dev" 2>/dev/null || true; } | sort -u)
  for type in $types; do
    if [ "$type" = LVM2_member ]; then
      owner=$(pvs --noheadings -o vg_name "$dev" 2>/dev/null | tr -d ' ' || true)
      if [ -n "$owner" ] && [ -n "$vg" ] && [ "$owner" != "$vg" ]; then
        refuse "$dev is a PV of the VG $owner, not of $vg: it holds that VG's data"
      fi
      continue
    fi
    refuse "$dev holds a $type signature (blkid/wipefs): refusing to put the $what on it; wipe it yourself (wipefs -a $dev) if its data is disposable"
  done
  [ -b "$dev" ] || refuse "$dev is not a block device"
  if [ -n "$(lsblk -n -o MOUNTPOINT "$dev" 2>/dev/null | tr -d '[:space:]')" ]; then
    refuse "$dev is mounted"
  fi
  name=$(basename "$(readlink -f "$dev")")
  holders=$(ls -A "/sys/class/block/$name/holders" 2>/dev/null || true)
  [ -z "$holders" ] || refuse "$dev is in use by $(tr '\n' ' ' <<<"$holders")"
  [ -n "$nolist" ] || in_list "$dev" "$list" ||
    refuse "$dev is not among the site file's devices for this role ($list): the LVM filter would hide it; add it there first"
}

vg_exists() { vgs --noheadings -o vg_name "$1" >/dev/null 2>&1; }

# ensure_vg VG DEVICE LIST WHAT
ensure_vg() {
  local vg=$1 dev=$2 list=$3 what=$4 pvvg
  if [ -n "$ROOT" ] || ! have pvs; then
    # Cannot look at LVM here; a disk that holds data is still refused.
    [ -z "$dev" ] || check_blank "$dev" "$vg" "$list" "$what VG"
    if [ -n "$ROOT" ]; then
      note "under --root: VG $vg is not looked at or created"
      return 0
    fi
    ((DRY_RUN)) || die "LVM tools (pvs) not found: install lvm2"
    note "LVM tools not installed yet: cannot tell whether VG $vg exists"
    [ -z "$dev" ] || change "create the $what VG $vg on $dev" vgcreate -q "$vg" "$dev"
    return 0
  fi
  if vg_exists "$vg"; then
    if [ -n "$dev" ]; then
      pvvg=$(pvs --noheadings -o vg_name "$dev" 2>/dev/null | tr -d ' ' || true)
      [ "$pvvg" = "$vg" ] || refuse "VG $vg exists already, and $dev is not one of its PVs (extend it yourself with vgextend if you mean to)"
    fi
    ok "VG $vg exists"
    return 0
  fi
  if [ -z "$dev" ]; then
    ((DRY_RUN)) && { note "VG $vg does not exist: a real run needs --device"; return 0; }
    refuse "VG $vg does not exist: name its disk with --device"
  fi
  check_blank "$dev" "$vg" "$list" "$what VG"
  if [ "$(blkid -p -o value -s TYPE "$dev" 2>/dev/null || true)" != LVM2_member ]; then
    change "create a PV on $dev" pvcreate -q "$dev"
  fi
  change "create the $what VG $vg on $dev" vgcreate -q "$vg" "$dev"
}

# A disk named on the command line is checked before the first change: refusing it must leave
# the machine as it was.
preflight_device() { # preflight_device VG DEVICE LIST WHAT
  local vg=$1 dev=$2 list=$3 what=$4 pvvg
  [ -n "$dev" ] || return 0
  if [ -z "$ROOT" ] && have pvs && vg_exists "$vg"; then
    pvvg=$(pvs --noheadings -o vg_name "$dev" 2>/dev/null | tr -d ' ' || true)
    [ "$pvvg" = "$vg" ] || refuse "VG $vg exists already, and $dev is not one of its PVs (extend it yourself with vgextend if you mean to)"
    return 0
  fi
  check_blank "$dev" "$vg" "$list" "$what VG"
}

# A VG the role needs that does not exist needs its disk: refused here, before any change (the
# dry run says the same), not after the packages, the helper and the filter are in.
preflight_vg() { # preflight_vg VG DEVICE WHAT
  local vg=$1 dev=$2 what=$3
  [ -z "$dev" ] || return 0
  [ -z "$ROOT" ] || return 0
  if have pvs && vg_exists "$vg"; then return 0; fi
  refuse "the $what VG $vg does not exist: name the blank disk for it with --device"
}

preflight_devices() {
  ((HAS_STORAGE || HAS_HOST)) && check_lvm_filter
  ((HAS_STORAGE)) && preflight_device "$E_STORAGE_VG" "$STORAGE_DEVICE" "$E_STORAGE_DEVICES" image
  ((HAS_HOST)) && preflight_device "$E_CACHE_VG" "$HOST_DEVICE" "$E_HOST_DEVICES" cache
  ((HAS_STORAGE)) && preflight_vg "$E_STORAGE_VG" "$STORAGE_DEVICE" image
  ((HAS_HOST)) && preflight_vg "$E_CACHE_VG" "$HOST_DEVICE" cache
  ((HAS_FRONTEND)) && preflight_frontend
  return 0
}

# -- storage node ------------------------------------------------------------------------------

step_storage() {
  step "image VG and thin pool"
  ensure_vg "$E_STORAGE_VG" "$STORAGE_DEVICE" "$E_STORAGE_DEVICES" image
  local segtype=''
  if [ -n "$ROOT" ]; then
    note "under --root: the thin pool is not looked at or created"
    return 0
  fi
  if lvm_usable; then
    segtype=$(lvs --noheadings -o segtype "$E_STORAGE_VG/$E_THIN_POOL" 2>/dev/null | tr -d ' ' || true)
  fi
  case $segtype in
    thin-pool) ok "thin pool $E_STORAGE_VG/$E_THIN_POOL exists" ;;
    '') change "create the thin pool $E_STORAGE_VG/$E_THIN_POOL on $E_POOL_PERCENT% of the VG" \
          "$(path "$E_HELPER")" pool-ensure --vg "$E_STORAGE_VG" --pool "$E_THIN_POOL" --data-percent "$E_POOL_PERCENT" ;;
    *) refuse "$E_STORAGE_VG/$E_THIN_POOL exists but is a $segtype LV, not a thin pool" ;;
  esac

  step "LIO configuration file the distribution restores at boot"
  # The node helper saves /etc/target/saveconfig.json (RHEL's targetctl default). Debian's
  # rtslib-fb restores /etc/rtslib-fb-target/saveconfig.json instead: point that at ours, or a
  # rebooted storage node would come back with no exports (or stale ones).
  local distro_file=''
  distro_file=$(python3 -c 'import rtslib_fb.root as r; print(r.default_save_file)' 2>/dev/null || true)
  [ -n "$PKG_FAMILY" ] || detect_packaging
  if [ -z "$distro_file" ] && [ "$PKG_FAMILY" = deb ]; then
    # Not installed yet (a dry run before the packages step): Debian's python3-rtslib-fb
    # restores this file.
    distro_file=/etc/rtslib-fb-target/saveconfig.json
  fi
  if [ -z "$distro_file" ] || [ "$distro_file" = /etc/target/saveconfig.json ]; then
    ok "targetctl restores /etc/target/saveconfig.json"
  elif [ "$(readlink "$(path "$distro_file")" 2>/dev/null)" = /etc/target/saveconfig.json ]; then
    ok "$distro_file points at /etc/target/saveconfig.json"
  elif [ -e "$(path "$distro_file")" ] && [ ! -L "$(path "$distro_file")" ] && \
       ! cmp -s "$(path "$distro_file")" "$(path /etc/target/saveconfig.json)"; then
    refuse "$distro_file holds an LIO configuration of its own; merge it into /etc/target/saveconfig.json (targetcli) and remove it, then re-run"
  else
    change "make $distro_file a link to /etc/target/saveconfig.json" \
      sh -c 'mkdir -p "$1" "$2" && ln -sfn /etc/target/saveconfig.json "$3"' sh \
      "$(path "$(dirname "$distro_file")")" "$(path /etc/target)" "$(path "$distro_file")"
  fi

  step "LIO configuration restored at boot"
  if ! systemd_running; then
    note "systemd is not running here: make the init system run 'targetctl restore' at boot"
    return 0
  fi
  local unit=''
  for candidate in rtslib-fb-targetctl.service target.service; do
    if systemctl cat "$candidate" >/dev/null 2>&1; then unit=$candidate; break; fi
  done
  if [ -z "$unit" ]; then
    ((DRY_RUN)) && { note "no rtslib-fb-targetctl/target unit yet (comes with targetcli)"; return 0; }
    die "no rtslib-fb-targetctl.service or target.service: is targetcli installed?"
  fi
  if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
    ok "$unit enabled"
  else
    change "enable $unit" systemctl enable --quiet "$unit"
  fi
}

# -- hypervisor host ---------------------------------------------------------------------------

new_initiator_name() {
  local name=''
  if have iscsi-iname; then name=$(iscsi-iname -p "$E_INITIATOR_PREFIX" 2>/dev/null || true); fi
  if [ -z "$name" ]; then
    name="$E_INITIATOR_PREFIX:$(hostname -s | tr 'A-Z_' 'a-z-')-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  fi
  printf '%s' "$name"
}

write_initiator_name() {
  local file=$1 name=$2
  mkdir -p "$(dirname "$file")"
  printf 'InitiatorName=%s\n' "$name" >"$file.tm_iscsi-new"
  chmod 644 "$file.tm_iscsi-new"
  mv -f "$file.tm_iscsi-new" "$file"
}

step_host() {
  step "iSCSI initiator"
  local file current name
  file=$(path /etc/iscsi/initiatorname.iscsi)
  current=''
  if [ -f "$file" ]; then current=$(sed -n 's/^InitiatorName=\(iqn\..*\)$/\1/p' "$file" | head -n 1); fi
  if [ -n "$current" ]; then
    # Kept: the storage node's ACLs name this host by it.
    ok "keeps its initiator name $current"
  else
    name=$(new_initiator_name)
    change "set the initiator name $name (unique to this host)" write_initiator_name "$file" "$name"
    if systemd_running && systemctl is-active --quiet iscsid.service; then
      change "restart iscsid for the new name" systemctl restart iscsid.service
    fi
  fi
  ensure_block /etc/iscsi/iscsid.conf "$CONF/iscsi/iscsid.conf.block"
  if systemd_running; then
    local unit=iscsid.socket
    systemctl cat "$unit" >/dev/null 2>&1 || unit=iscsid.service
    if systemctl is-enabled --quiet "$unit" 2>/dev/null; then ok "$unit enabled"
    else change "enable $unit" systemctl enable --quiet "$unit"
    fi
  fi

  step "local cache VG"
  ensure_vg "$E_CACHE_VG" "$HOST_DEVICE" "$E_HOST_DEVICES" cache

  step "boot-time activation"
  local unit_changed=$CHANGES
  install_file "$CONF/systemd/tm-iscsi-activate.service" /etc/systemd/system/tm-iscsi-activate.service 644 root root
  if systemd_running; then
    enable_unit tm-iscsi-activate.service "$unit_changed"
  elif [ -z "$ROOT" ]; then
    note "systemd is not running here: activation goes to /etc/tm_iscsi/boot.d, for the init to run"
    install_file "$CONF/boot/50-tm-iscsi-activate" /etc/tm_iscsi/boot.d/50-tm-iscsi-activate 755 root root
  fi

  step "read-cache warm-up"
  unit_changed=$CHANGES
  install_file "$CONF/systemd/tm-iscsi-cache-warm.service" /etc/systemd/system/tm-iscsi-cache-warm.service 644 root root
  install_file "$CONF/systemd/tm-iscsi-cache-warm.timer" /etc/systemd/system/tm-iscsi-cache-warm.timer 644 root root
  if systemd_running; then
    enable_unit tm-iscsi-cache-warm.timer "$unit_changed" --now
  elif [ -z "$ROOT" ]; then
    # Without systemd the timer never fires: cron runs the same command.
    install_file "$CONF/cron/tm-iscsi-cache-warm" /etc/cron.d/tm-iscsi-cache-warm 644 root root
    have cron || have crond ||
      note "no cron daemon here: run '$E_HELPER cache-warm' every few minutes by other means"
  fi
}

# -- front-end ---------------------------------------------------------------------------------

# oned's DATASTORE_LOCATION (commented out: OpenNebula's default for its layout).
oned_datastore_location() {
  local file=$1 value
  value=$(sed -n 's/^[[:space:]]*DATASTORE_LOCATION[[:space:]]*=[[:space:]]*"\{0,1\}\([^"]*\)"\{0,1\}[[:space:]]*$/\1/p' "$file" 2>/dev/null | tail -n 1)
  if [ -z "$value" ]; then
    if [ -n "$ONE_LOCATION" ]; then value=${ONE_LOCATION%/}/var/datastores; else value=/var/lib/one/datastores; fi
  fi
  printf '%s' "${value%/}"
}

# Everything the front-end step would refuse, checked before the first change.
require_remotes() {
  [ -d "$(path "$ONE_REMOTES")" ] ||
    refuse "no $ONE_REMOTES: this is not an OpenNebula front-end (install OpenNebula first; a self-contained one: --one-location DIR)"
}

preflight_frontend() {
  require_remotes
  user_exists "$E_ONEADMIN" || refuse "no user $E_ONEADMIN: install OpenNebula first"
  local oned location
  oned=$(path "$ONE_ETC/oned.conf")
  if [ -f "$oned" ]; then
    location=$(oned_datastore_location "$oned")
    [ "$location" = "$E_DATASTORES" ] ||
      refuse "oned keeps its datastores in $location (DATASTORE_LOCATION of $ONE_ETC/oned.conf), the site file says $E_DATASTORES: set [cloud] datastore_location = $location"
  fi
}

step_frontend() {
  step "front-end"
  local group defaultrc=$CONF/frontend/defaultrc.block
  group=$(id -gn "$E_ONEADMIN" 2>/dev/null || echo "$E_ONEADMIN")
  install_file "$CONF/frontend/tm_iscsi.conf" "$ONE_ETC/tm_iscsi.conf" 640 root "$group"
  if [ "$ONE_ETC" != /etc/one ]; then
    # The driver looks for /etc/one/tm_iscsi.conf unless told otherwise.
    defaultrc=$WORK/defaultrc.block
    sed "/^TM_ISCSI_PYTHON=/a TM_ISCSI_CONF=$ONE_ETC/tm_iscsi.conf" "$CONF/frontend/defaultrc.block" >"$defaultrc"
  fi
  ensure_block "$ONE_ETC/defaultrc" "$defaultrc" '^[[:space:]]*(export[[:space:]]+)?TM_ISCSI_PYTHON='
  for kind in tm datastore; do
    sync_tree "$SRC/remotes/$kind/iscsi_lvm" "$ONE_REMOTES/$kind/iscsi_lvm" "$E_ONEADMIN"
  done
  for file in oned/iscsi_lvm.conf oned/iscsi_lvm.onecfg oned/vmm_execrc.line; do
    install_file "$CONF/$file" "$ONE_ETC/tm_iscsi/$(basename "$file")" 644 root root
  done
  # The datastore templates carry the CHAP secret: oneadmin's alone (onedatastore create).
  for file in datastores/image.tpl datastores/system.tpl; do
    install_file "$CONF/$file" "$ONE_ETC/tm_iscsi/$(basename "$file")" 600 "$E_ONEADMIN" "$group"
  done
  step_admin_tools
  step_checkpoints
  step_host_probe
  step_oned
}

# The host probe: oned's monitord runs it on every KVM host once `onehost sync` has shipped it.
PROBE_DIRS=(im/kvm-probes.d/host/system im/qemu-probes.d/host/system)
PROBE_NAME=tm_iscsi-cache.sh
step_host_probe() {
  step "host probe (cache facts in onehost show)"
  local dir before group shipped=0
  group=$(id -gn "$E_ONEADMIN" 2>/dev/null || echo "$E_ONEADMIN")
  for dir in "${PROBE_DIRS[@]}"; do
    [ -d "$(path "$ONE_REMOTES/$dir")" ] || continue
    before=$CHANGES
    install_file "$CONF/probes/$PROBE_NAME" "$ONE_REMOTES/$dir/$PROBE_NAME" 755 "$E_ONEADMIN" "$group"
    ((CHANGES > before)) && shipped=1
  done
  ((shipped)) && PENDING+=("ship the host probe to the hosts: onehost sync --force (as $E_ONEADMIN)")
  return 0
}

# The write-back checkpoints (tm-iscsi checkpoint --due) every minute, as oneadmin.
step_checkpoints() {
  step "write-back checkpoints"
  local unit_changed=$CHANGES
  install_file "$CONF/systemd/tm-iscsi-checkpoint.service" /etc/systemd/system/tm-iscsi-checkpoint.service 644 root root
  install_file "$CONF/systemd/tm-iscsi-checkpoint.timer" /etc/systemd/system/tm-iscsi-checkpoint.timer 644 root root
  if systemd_running; then
    enable_unit tm-iscsi-checkpoint.timer "$unit_changed" --now
  elif [ -z "$ROOT" ]; then
    install_file "$CONF/cron/tm-iscsi-checkpoint" /etc/cron.d/tm-iscsi-checkpoint 644 root root
    have cron || have crond ||
      note "no cron daemon here: run 'tm-iscsi checkpoint --due' as $E_ONEADMIN every minute by other means"
  fi
}

# The admin tools of the virtualenv, on PATH: README's steps run tm-iscsi and tm-iscsi-hook.
step_admin_tools() {
  step "admin tools on PATH ($BIN_DIR)"
  local tool want link
  for tool in "${ADMIN_TOOLS[@]}"; do
    want=$E_VENV/bin/$tool
    link=$(path "$BIN_DIR/$tool")
    if [ -L "$link" ] && [ "$(readlink "$link")" = "$want" ]; then
      ok "$BIN_DIR/$tool -> $want"
    elif [ -e "$link" ] && [ ! -L "$link" ]; then
      refuse "$BIN_DIR/$tool exists and is not tm_iscsi's link: remove it or rename it first"
    else
      change "link $BIN_DIR/$tool -> $want" sh -c 'mkdir -p "$(dirname "$2")" && ln -sfn "$1" "$2"' sh "$want" "$link"
    fi
  done
}

apply_oned() {
  local oned=$1 patch=$2
  local stamp
  stamp=$(date +%Y%m%d%H%M%S)
  cp -p "$oned" "$oned.tm_iscsi-$stamp"
  [ ! -f "$(path "$ONE_ETC/vmm_exec/vmm_execrc")" ] ||
    cp -p "$(path "$ONE_ETC/vmm_exec/vmm_execrc")" "$(path "$ONE_ETC/vmm_exec/vmm_execrc").tm_iscsi-$stamp"
  onecfg patch --format line ${ROOT:+--prefix "$ROOT"} "$patch" || true
  config_render check-oned "$oned" "${CHECK_VMM[@]}" >/dev/null 2>&1 ||
    die "onecfg did not register iscsi_lvm completely: $(config_render check-oned "$oned" "${CHECK_VMM[@]}" 2>&1 | tr '\n' ' ')"
  PENDING+=("restart oned so it loads the iscsi_lvm drivers: systemctl restart opennebula")
}

step_oned() {
  step "oned.conf registration"
  local oned problems patch=$ONE_ETC/tm_iscsi/iscsi_lvm.onecfg execrc=$ONE_ETC/vmm_exec/vmm_execrc
  oned=$(path "$ONE_ETC/oned.conf")
  if [ ! -f "$oned" ]; then
    note "no $ONE_ETC/oned.conf: register iscsi_lvm with $patch on the front-end"
    return 0
  fi
  CHECK_VMM=()
  if [ -f "$(path "$execrc")" ]; then
    CHECK_VMM=(--vmm-execrc "$(path "$execrc")")
  else
    note "no $execrc: live disk snapshots need $ONE_ETC/tm_iscsi/vmm_execrc.line there"
  fi
  if problems=$(config_render check-oned "$oned" "${CHECK_VMM[@]}" 2>&1); then
    ok "oned.conf registers iscsi_lvm (and vmm_execrc allows its live disk snapshots)"
    return 0
  fi
  if ((APPLY_ONED)); then
    have onecfg || die "--apply-oned needs onecfg (OpenNebula's configuration tool), which is not installed; paste $ONE_ETC/tm_iscsi/iscsi_lvm.conf by hand instead"
    change "register iscsi_lvm in oned.conf with onecfg patch (a copy of the old file is kept)" \
      apply_oned "$oned" "$(path "$patch")"
    ((DRY_RUN)) && indent <"$CONF/oned/iscsi_lvm.onecfg"
    return 0
  fi
  note "oned.conf does not register iscsi_lvm yet:"
  sed 's/^[^:]*: /        /' <<<"$problems"
  note "install.sh does not edit oned.conf unless asked. To register the driver, either"
  note "  re-run with --apply-oned, or run: onecfg patch --format line $patch"
  note "  or paste $ONE_ETC/tm_iscsi/iscsi_lvm.conf (replacing the ARGUMENTS of TM_MAD and DATASTORE_MAD)"
  note "  and replace LIVE_DISK_SNAPSHOTS in $execrc by $ONE_ETC/tm_iscsi/vmm_execrc.line"
  note "then restart oned (systemctl restart opennebula). The patch:"
  grep -v '^#' "$CONF/oned/iscsi_lvm.onecfg" | indent
  PENDING+=("register iscsi_lvm in oned.conf and restart oned (see above)")
}

# -- uninstall ---------------------------------------------------------------------------------

# remove_path NAME: a file, link or directory install.sh put there.
remove_path() {
  local p
  p=$(path "$1")
  if [ -e "$p" ] || [ -L "$p" ]; then
    change "remove $1" rm -rf -- "$p"
  else
    ok "$1 is not there"
  fi
}

# remove_block FILE: FILE without the tm_iscsi block (the rest of it as it was).
remove_block() {
  local name=$1 file new mode owner group
  file=$(path "$name")
  if [ ! -f "$file" ] || ! grep -qxF "$BLOCK_BEGIN" "$file"; then
    ok "$name has no tm_iscsi block"
    return 0
  fi
  new=$WORK/unblock.$RANDOM
  strip_block "$file" >"$new"
  read -r mode owner group <<<"$(stat -c '%a %U %G' "$file")"
  change "remove the tm_iscsi block from $name" put_file "$new" "$file" "$mode" "$owner" "$group"
  show_diff "$file" "$new"
}

# remove_unit UNIT: disabled (and stopped), then its file removed.
remove_unit() {
  local unit=$1
  if systemd_running && systemctl is-enabled --quiet "$unit" 2>/dev/null; then
    change "disable $unit" systemctl disable --quiet --now "$unit"
  fi
  remove_path "/etc/systemd/system/$unit"
}

# What still uses this node: refused before anything is removed (running VMs lose their disks).
preflight_uninstall_node() {
  local helper in_use
  [ -z "$ROOT" ] || return 0
  helper=$(path "$E_HELPER")
  if ((HAS_HOST)); then
    in_use=$(dmsetup ls 2>/dev/null | awk '$1 ~ /^tmi-(top|wb)-/ {print $1}' | tr '\n' ' ')
    [ -z "$in_use" ] ||
      refuse "this host still runs tm_iscsi disk stacks ($in_use): terminate, stop or migrate its VMs first (write-back data would be lost)"
    if [ -x "$helper" ]; then
      in_use=$("$helper" sessions 2>/dev/null | grep -o '"iqn": "[^"]*"' | wc -l)
      [ "$in_use" = 0 ] || refuse "this host still has $in_use iSCSI session(s) to tm_iscsi targets: terminate, stop or migrate its VMs first"
    fi
  fi
  if ((HAS_STORAGE)) && [ -x "$helper" ]; then
    in_use=$("$helper" exports 2>/dev/null | grep -o '"iqn": "[^"]*"' | wc -l)
    [ "$in_use" = 0 ] || refuse "this storage node still exports $in_use tm_iscsi target(s): terminate or undeploy the VMs that use them first"
  fi
  if ((REMOVE_DATA && HAS_STORAGE)) && have lvs && vg_exists "$E_STORAGE_VG"; then
    in_use=$(lvs --noheadings -o lv_name "$E_STORAGE_VG" 2>/dev/null | tr -d ' ' | grep -vx "$E_THIN_POOL" | grep -c . || true)
    [ "$in_use" = 0 ] ||
      refuse "--remove-data: VG $E_STORAGE_VG still holds $in_use LV(s) besides the thin pool (images, VM disks): delete them in OpenNebula first, or remove the VG yourself"
  fi
  return 0
}

uninstall_node() {
  step "node helper and its sudoers rule"
  remove_path "$E_HELPER"
  remove_path /etc/sudoers.d/tm_iscsi
  remove_path /etc/tm_iscsi/node.conf
  step "LVM filter"
  remove_block /etc/lvm/lvmlocal.conf
  if ((HAS_STORAGE)); then
    step "LIO configuration restored at boot"
    local distro_file=/etc/rtslib-fb-target/saveconfig.json
    if [ -L "$(path "$distro_file")" ] && [ "$(readlink "$(path "$distro_file")")" = /etc/target/saveconfig.json ]; then
      # Kept restorable: a copy of what is saved now instead of the link.
      change "replace the link $distro_file by a copy of /etc/target/saveconfig.json" \
        sh -c 'rm -f "$2" && { [ ! -f "$1" ] || cp -p "$1" "$2"; }' sh \
        "$(path /etc/target/saveconfig.json)" "$(path "$distro_file")"
    else
      ok "$distro_file is not tm_iscsi's link"
    fi
    if ((REMOVE_DATA)); then
      step "image VG (--remove-data)"
      if [ -z "$ROOT" ] && have vgs && vg_exists "$E_STORAGE_VG"; then
        change "remove the VG $E_STORAGE_VG and its empty thin pool" vgremove -q -f "$E_STORAGE_VG"
      else
        ok "VG $E_STORAGE_VG is not there"
      fi
    fi
  fi
  if ((HAS_HOST)); then
    step "iSCSI initiator settings (the initiator name is kept: it is the host's identity)"
    remove_block /etc/iscsi/iscsid.conf
    step "boot-time activation and read-cache warm-up"
    remove_unit tm-iscsi-activate.service
    remove_unit tm-iscsi-cache-warm.timer
    remove_unit tm-iscsi-cache-warm.service
    systemd_running && change "reload systemd" systemctl daemon-reload
    remove_path /etc/tm_iscsi/boot.d/50-tm-iscsi-activate
    remove_path /etc/cron.d/tm-iscsi-cache-warm
    if ((REMOVE_DATA)); then
      step "local cache VG (--remove-data)"
      if [ -z "$ROOT" ] && have vgs && vg_exists "$E_CACHE_VG"; then
        change "remove the cache VG $E_CACHE_VG (read caches only: no stack uses it)" vgremove -q -f "$E_CACHE_VG"
      else
        ok "VG $E_CACHE_VG is not there"
      fi
    fi
  fi
  step "state and locks"
  remove_path /var/lib/tm_iscsi
  local dir
  for dir in /etc/tm_iscsi/boot.d /etc/tm_iscsi; do
    if [ -d "$(path "$dir")" ] && [ -z "$(ls -A "$(path "$dir")")" ]; then remove_path "$dir"; fi
  done
}

uninstall_frontend() {
  step "front-end"
  local kind tool
  remove_unit tm-iscsi-checkpoint.timer
  remove_unit tm-iscsi-checkpoint.service
  systemd_running && change "reload systemd" systemctl daemon-reload
  remove_path /etc/cron.d/tm-iscsi-checkpoint
  for kind in tm datastore; do remove_path "$ONE_REMOTES/$kind/iscsi_lvm"; done
  local dir
  for dir in "${PROBE_DIRS[@]}"; do remove_path "$ONE_REMOTES/$dir/$PROBE_NAME"; done
  remove_path "$ONE_ETC/tm_iscsi"
  remove_path "$ONE_ETC/tm_iscsi.conf"
  remove_block "$ONE_ETC/defaultrc"
  for tool in "${ADMIN_TOOLS[@]}"; do
    if [ -L "$(path "$BIN_DIR/$tool")" ] && [ "$(readlink "$(path "$BIN_DIR/$tool")")" = "$E_VENV/bin/$tool" ]; then
      remove_path "$BIN_DIR/$tool"
    fi
  done
  if [ -f "$(path "$ONE_ETC/oned.conf")" ] && grep -q "$E_DRIVER_NAME" "$(path "$ONE_ETC/oned.conf")"; then
    note "oned.conf still names iscsi_lvm: remove it from the -d (and -s) lists of TM_MAD and DATASTORE_MAD,"
    note "  the TM_MAD_CONF and DS_MAD_CONF sections named iscsi_lvm, and kvm-iscsi_lvm qemu-iscsi_lvm from"
    note "  LIVE_DISK_SNAPSHOTS in $ONE_ETC/vmm_exec/vmm_execrc; then restart oned. Datastores of iscsi_lvm must"
    note "  be removed in OpenNebula first (onedatastore delete), or oned refuses to start with them."
    PENDING+=("undo the oned.conf registration of iscsi_lvm (see above)")
  fi
}

uninstall_venv() {
  # The virtualenv serves every role of this machine: it goes with the last of them.
  if [ -f "$(path /etc/tm_iscsi/node.conf)" ] || [ -d "$(path "$ONE_REMOTES/tm/iscsi_lvm")" ]; then
    ((DRY_RUN)) || { note "$E_VENV kept: another tm_iscsi role of this machine uses it"; return 0; }
  fi
  step "tm_iscsi Python package"
  remove_path "$E_VENV"
}

# -- main --------------------------------------------------------------------------------------

# summary NO_CHANGE_TEXT MADE_SUFFIX: what is left to do, then one closing line.
summary() {
  step "summary"
  for pending in "${PENDING[@]}"; do note "to do: $pending"; done
  if ((DRY_RUN)); then
    printf 'dry run: %d change(s) would be made; nothing was changed\n' "$CHANGES"
  elif ((CHANGES == 0)); then
    printf 'no change: %s\n' "$1"
  else
    printf '%d change(s) made%s\n' "$CHANGES" "$2"
  fi
}

PENDING=()
roles_text=$(printf '%s ' "${ROLES[@]}")
printf 'tm_iscsi install: roles %s| %s%s%s\n' "$roles_text" "${SITE:+site $SITE}${RENDERED:+rendered $RENDERED}" \
  "${ROOT:+ | root $ROOT}" "$( ((DRY_RUN)) && echo ' | dry run: nothing will be changed')"

# Everything that can refuse runs before the first change. Rendering needs Jinja2, which the
# packages step brings on a fresh machine: only then do packages come first.
if ((UNINSTALL)); then
  E_DRIVER_NAME=iscsi_lvm
  step_render
  read_install_env
  ((HAS_STORAGE || HAS_HOST)) && preflight_uninstall_node
  ((HAS_FRONTEND)) && uninstall_frontend
  ((HAS_STORAGE || HAS_HOST)) && uninstall_node
  uninstall_venv
  summary 'nothing of tm_iscsi was left' \
    "; data (VGs, LVs, images) kept$( ((REMOVE_DATA)) && echo ' except what --remove-data named')"
  exit 0
fi

if [ -n "$RENDERED" ] || render_python >/dev/null; then
  step_render
  read_install_env
  preflight_devices
  step_packages
else
  # Before the packages: what can be told without the rendered files.
  ((HAS_FRONTEND)) && require_remotes
  if ((HAS_STORAGE)) && [ -z "$STORAGE_DEVICE" ] && [ -z "$ROOT" ] && ! have pvs; then
    refuse "LVM is not installed, so the image VG does not exist yet: name the blank disk for it with --device"
  fi
  if ((HAS_HOST)) && [ -z "$HOST_DEVICE" ] && [ -z "$ROOT" ] && ! have pvs; then
    refuse "LVM is not installed, so the cache VG does not exist yet: name the blank disk for it with --device"
  fi
  for dev in "$STORAGE_DEVICE" "$HOST_DEVICE"; do
    [ -z "$dev" ] || check_blank "$dev" '' '' 'tm_iscsi VG' nolist
  done
  step_packages
  step_render
  read_install_env
  preflight_devices
fi
step_python
if ((HAS_STORAGE || HAS_HOST)); then
  step_oneadmin
  step_helper
  step_sudoers
  step_lvm_filter
fi
((HAS_STORAGE)) && step_storage
((HAS_HOST)) && step_host
((HAS_FRONTEND)) && step_frontend

summary 'everything was already in place' ''
