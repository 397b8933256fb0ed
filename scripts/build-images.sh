#!/usr/bin/env bash
# Build Cello's container images (images/<name>/Dockerfile) with docker, or podman where no
# Docker daemon answers. `make images` runs this.
#
#   scripts/build-images.sh                        # cello, cello-serve, cello-train
#   scripts/build-images.sh cello cello-serve      # only these
#   PUSH=1 scripts/build-images.sh                 # and push each one
#   DRY_RUN=1 scripts/build-images.sh              # print the commands, run nothing
#   scripts/build-images.sh --containers-conf > containers.conf   # for podman run here:
#   CONTAINERS_CONF=$PWD/containers.conf podman run --rm ghcr.io/cello-ml/cello:0.1.0 --help
#
# Settings (environment):
#   ENGINE         docker | podman [docker when `docker info` answers, else podman]
#   BASE_IMAGE     base of the CPU images [python:3.11-slim-bookworm]. When it is not on this
#                  machine and cannot be pulled (no registry reachable), a Debian bookworm base
#                  with python3 is made here with debootstrap (root) and used instead.
#   TRAIN_BASE_IMAGE  base of cello-train [the vllm image of cello.k8s.images]. It only comes
#                  from a registry: where none is reachable, cello-train is skipped, said so.
#   TORCH_INDEX_URL  where the CPU torch wheel comes from [https://download.pytorch.org/whl/cpu];
#                  when that index does not answer, torch must come from pip's own indexes.
#   PUSH=1         push every image built; SOURCE: the org.opencontainers.image.source label.
#   STRICT=1       fail, instead of skipping, when an image's base cannot be had (CI that pushes).
#   Tags: cello.k8s.images (CELLO_IMAGE_REGISTRY, CELLO_IMAGE_<KEY>), version = the package's.
#
# The host's pip configuration (`pip config list` and PIP_* variables: index URLs, find-links,
# trusted hosts, CA bundle) is passed as build arguments, so pip inside the build sees the same
# packages as pip here; with podman, the local folders it names and the CA bundle are
# bind-mounted read-only into the build (docker build cannot mount: local ones are dropped).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
GPU_IMAGES=" cello-train "          # built on a CUDA base from a registry, never on a local one
DEFAULT_BASE=python:3.11-slim-bookworm
LOCAL_BASE=localhost/debian-python3:bookworm

TEMP=()                              # removed on exit, whatever happens
trap 'rm -rf "${TEMP[@]}"' EXIT
say() { printf '[images] %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }
run() {  # print (quoted as a shell would need), then run unless DRY_RUN=1
  { printf '+'; printf ' %q' "$@"; printf '\n'; } >&2
  [ "${DRY_RUN:-0}" = 1 ] || "$@"
}

# --- the engine -------------------------------------------------------------------------------
pick_engine() {
  if [ -n "${ENGINE:-}" ]; then
    command -v "$ENGINE" >/dev/null || die "ENGINE=$ENGINE is not installed."
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1; then
    ENGINE=docker
  elif command -v podman >/dev/null; then
    ENGINE=podman
  else
    die "neither a Docker daemon nor podman: install docker (and start it) or podman (apt-get install podman buildah runc)."
  fi
  say "engine: $ENGINE"
}

# podman on hosts with a cgroup v1 or hybrid layout, or low hard ulimits: runc (crun fails
# there), and ulimits a container may set: no more than this shell's hard limits, and no more
# processes than the kernel has pids (higher nproc values are refused in some sandboxes).
containers_conf() {
  local nofile nproc pid_max
  nofile=$(ulimit -Hn) nproc=$(ulimit -Hu)
  pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo unlimited)
  if [ "$nproc" = unlimited ] || { [ "$pid_max" != unlimited ] && [ "$pid_max" -lt "$nproc" ]; }; then
    nproc=$pid_max
  fi
  echo "[containers]"
  if [ "$nofile" != unlimited ] && [ "$nproc" != unlimited ]; then
    echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
  fi
  if command -v runc >/dev/null; then printf '[engine]\nruntime = "runc"\n'; fi
}

podman_conf() {
  [ "$ENGINE" = podman ] && [ -z "${CONTAINERS_CONF:-}" ] || return 0
  local conf
  conf=$(mktemp "${TMPDIR:-/tmp}/cello-containers.XXXXXX")
  TEMP+=("$conf")
  containers_conf >"$conf"
  export CONTAINERS_CONF=$conf
}

have_image() { "$ENGINE" image inspect "$1" >/dev/null 2>&1; }

# True when the image is here or could be pulled now.
obtainable() {
  have_image "$1" && return 0
  [ "${DRY_RUN:-0}" = 1 ] && return 1
  "$ENGINE" pull "$1" >/dev/null 2>&1 && return 0
  say "cannot pull $1 (no registry answers?)"
  return 1
}

# --- a local Debian base, for machines without a registry ------------------------------------
debian_mirror() {
  [ -n "${DEBIAN_MIRROR:-}" ] && { echo "$DEBIAN_MIRROR"; return; }
  # the mirror apt uses here, else Debian's own
  grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
    | grep -oE '(https?|file)://[^ ]+/debian/?( |$)' | head -1 | tr -d ' ' || true
}

local_base() {
  if have_image "$LOCAL_BASE" && [ "${REBUILD_BASE:-0}" != 1 ]; then
    say "base: $LOCAL_BASE (made earlier with debootstrap; REBUILD_BASE=1 remakes it)"
    return
  fi
  command -v debootstrap >/dev/null \
    || die "cannot pull $DEFAULT_BASE and debootstrap is missing: apt-get install debootstrap, or pass BASE_IMAGE=<a local image with python3 >= 3.11>."
  [ "$(id -u)" = 0 ] || die "making the local base with debootstrap needs root (or pass BASE_IMAGE=<a local image>)."
  local mirror rootfs start=$SECONDS
  mirror=$(debian_mirror)
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/cello-rootfs.XXXXXX")
  TEMP+=("$rootfs")
  say "no registry: making $LOCAL_BASE with debootstrap from $mirror (about a minute)"
  run debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror"
  run rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  printf '+ tar -C %s -c . | %s import ... - %s\n' "$rootfs" "$ENGINE" "$LOCAL_BASE" >&2
  if [ "${DRY_RUN:-0}" != 1 ]; then
    tar -C "$rootfs" -c . | "$ENGINE" import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null
  fi
  rm -rf "$rootfs"
  say "base: $LOCAL_BASE made in $((SECONDS - start)) s"
}

cpu_base() {
  if [ -n "${BASE_IMAGE:-}" ]; then
    CPU_BASE=$BASE_IMAGE
  elif obtainable "$(qualified "$DEFAULT_BASE")"; then
    CPU_BASE=$(qualified "$DEFAULT_BASE")
  else
    local_base
    CPU_BASE=$LOCAL_BASE
  fi
  say "CPU base: $CPU_BASE"
}

# podman wants registry-qualified names (docker.io/library/...) where docker takes short ones.
qualified() {
  case "$ENGINE:$1" in
    podman:*/*/*|podman:localhost/*|docker:*) echo "$1" ;;
    podman:*/*) echo "docker.io/$1" ;;
    podman:*) echo "docker.io/library/$1" ;;
  esac
}

# --- pip's configuration, forwarded ------------------------------------------------------------
# `pip config list` prints the merged files as  global.find-links='/wheels'  (or install.), and
# PIP_* variables as  :env:.find-links='/wheels'; the variable wins, then install, then global.
PIP_CONFIG=""
pip_setting() {
  [ -n "$PIP_CONFIG" ] || PIP_CONFIG=$("$PYTHON" -m pip config list 2>/dev/null || true)$'\n'
  printf '%s' "$PIP_CONFIG" | awk -v k="$1" '
    { key = $0; sub(/=.*/, "", key); value = $0; sub(/^[^=]*=/, "", value); gsub(/^'\''|'\''$/, "", value) }
    key == ":env:." k { e = value } key == "install." k { i = value } key == "global." k { g = value }
    END { print (e != "" ? e : (i != "" ? i : g)) }'
}

# Local entries (a folder, or a file:// URL) need a mount; a file:// index's files sit beside
# its simple/ folder, so the folder above it is mounted.
local_dir() {
  local entry=$1 path
  case "$entry" in
    file://*) path=${entry#file://} ;;
    /*) path=$entry ;;
    *) return 1 ;;
  esac
  path=${path%/}
  [ "${path##*/}" = simple ] && path=${path%/*}
  echo "$path"
}

BUILD_ARGS=()
MOUNTS=()
forward_pip() {
  local var key value entry kept dir
  for var in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_TRUSTED_HOST; do
    key=$(echo "${var#PIP_}" | tr 'A-Z_' 'a-z-')
    value=${!var:-$(pip_setting "$key")}
    kept=()
    for entry in $value; do
      if dir=$(local_dir "$entry"); then
        if [ "$ENGINE" != podman ]; then
          say "warning: $var entry $entry is a local folder, which docker build cannot mount: dropped."
          continue
        fi
        [ -d "$dir" ] && MOUNTS+=(-v "$dir:$dir:ro")
      fi
      kept+=("$entry")
    done
    [ ${#kept[@]} -eq 0 ] || BUILD_ARGS+=(--build-arg "$var=${kept[*]}")
  done
  # The CA bundle pip trusts here (it may hold a proxy's CA): mounted over the image's own.
  local cert=${PIP_CERT:-$(pip_setting cert)}
  cert=${cert:-/etc/ssl/certs/ca-certificates.crt}
  if [ "$ENGINE" = podman ] && [ -f "$cert" ]; then
    MOUNTS+=(-v "$cert:/etc/ssl/certs/ca-certificates.crt:ro")
    BUILD_ARGS+=(--build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt)
  fi
  # torch: the CPU index if it answers, else whatever the indexes above hold (torch==...+cpu)
  local torch=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
  if [ -n "$torch" ] && ! SSL_CERT_FILE=${cert} "$PYTHON" -c "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=10)" "$torch/" 2>/dev/null; then
    say "$torch does not answer: the CPU torch wheel must come from pip's own indexes or find-links."
    torch=""
  fi
  BUILD_ARGS+=(--build-arg "TORCH_INDEX_URL=$torch")
}

# --- build ---------------------------------------------------------------------------------------
refs() {  # "name reference" for every Cello image, from cello.k8s.images (env overrides apply)
  PYTHONPATH=. "$PYTHON" -c 'from cello.k8s.images import _CELLO, image
for key, name in _CELLO.items(): print(name, image(key))'
}

main() {
  local names=("$@") name ref base built=() skipped=() start
  [ ${#names[@]} -gt 0 ] || names=(cello cello-serve cello-train)
  declare -A REF
  while read -r name ref; do REF[$name]=$ref; done < <(refs)
  for name in "${names[@]}"; do
    if [ ! -f "images/$name/Dockerfile" ]; then
      local known=(images/*/Dockerfile)
      known=("${known[@]#images/}")
      die "no images/$name/Dockerfile (images: ${known[*]%/Dockerfile})."
    fi
    [ -n "${REF[$name]:-}" ] || die "images/$name is not named in cello/k8s/images.py: add its key there."
  done

  pick_engine
  podman_conf
  forward_pip
  local version revision source
  version=$(PYTHONPATH=. "$PYTHON" -c 'import cello; print(cello.__version__)')
  revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  source=${SOURCE:-https://github.com/cello-ml/cello}
  local engine_args=()
  # podman: docker format (OCI drops HEALTHCHECK); the host's network (no CNI setup needed)
  [ "$ENGINE" = podman ] && engine_args=(--format docker --network host)

  for name in "${names[@]}"; do
    if [[ $GPU_IMAGES == *" $name "* ]]; then
      base=${TRAIN_BASE_IMAGE:-$(PYTHONPATH=. "$PYTHON" -c 'from cello.k8s.images import image; print(image("vllm"))')}
      base=$(qualified "$base")
      if ! obtainable "$base"; then
        [ "${STRICT:-0}" != 1 ] || die "cannot pull $base, the CUDA base of $name (STRICT=1)."
        say "skipping $name: its CUDA base $base comes from a registry and none answers here. Build it where one does (the images workflow does, on tags)."
        skipped+=("$name")
        continue
      fi
    else
      [ -n "${CPU_BASE:-}" ] || cpu_base
      base=$CPU_BASE
    fi
    start=$SECONDS
    run "$ENGINE" build "${engine_args[@]}" "${MOUNTS[@]}" "${BUILD_ARGS[@]}" \
      --build-arg "BASE_IMAGE=$base" --build-arg "VERSION=$version" \
      --build-arg "REVISION=$revision" --build-arg "SOURCE=$source" \
      -f "images/$name/Dockerfile" -t "${REF[$name]}" .
    say "$name: built in $((SECONDS - start)) s"
    built+=("${REF[$name]}")
    if [ "${PUSH:-0}" = 1 ]; then run "$ENGINE" push "${REF[$name]}"; fi
  done

  if [ ${#built[@]} -gt 0 ] && [ "${DRY_RUN:-0}" != 1 ]; then
    say "built:"
    for ref in "${built[@]}"; do
      "$ENGINE" image inspect --format "{{.Size}}" "$ref" \
        | awk -v r="$ref" '{ printf "  %-48s %6.2f GB\n", r, $1 / 1e9 }' >&2
    done
  fi
  [ ${#skipped[@]} -eq 0 ] || say "skipped: ${skipped[*]}"
}

if [ "${1:-}" = --containers-conf ]; then containers_conf; else main "$@"; fi
