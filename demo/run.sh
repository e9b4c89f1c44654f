#!/usr/bin/env bash
# The greedy pattern in two pipelines, on this machine, with the built bundles and a file:// cache:
#   pipeline A: a chain of 5 derivations, link 4 fails → build fails, links 1-3 are in the cache already;
#   pipeline B: links 1-3 gone locally (a fresh runner), failure fixed → substituted, only 4-5 built.
# On a fresh clone it installs what it needs first: Nix (Debian's nix-bin), the npm packages, the build.
# Leaves everything in $DEMO_DIR.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
GREEDY="node $ROOT/dist/greedy-nix.mjs"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi
if ! command -v nix >/dev/null; then
  echo "demo: installing Nix (Debian's nix-bin)"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nix-bin >/dev/null
fi
[ -d "$ROOT/node_modules" ] || (cd "$ROOT" && echo "demo: npm ci" && npm ci --no-audit --no-fund >/dev/null)
[ -f "$ROOT/dist/greedy-nix.mjs" ] || (cd "$ROOT" && echo "demo: npm run build" && npm run build >/dev/null)

DEMO_DIR="${DEMO_DIR:-$(mktemp -d /tmp/greedy-demo-XXXXXX)}"
run_id="$(date +%s)-$$"
system="$(uname -m | sed 's/arm64/aarch64/')-linux"
mkdir -p "$DEMO_DIR/etc-nix"
# An isolated Nix config, the nixos/nix image's (no experimental feature on: greedy-nix turns on what it needs),
# with no network substituter and no build users (works as root without a daemon).
printf '%s\n' 'sandbox = false' 'build-users-group =' 'substituters =' > "$DEMO_DIR/etc-nix/nix.conf"
export NIX_CONF_DIR="$DEMO_DIR/etc-nix"
unset NIX_CONFIG
nix() { command nix --extra-experimental-features 'nix-command flakes' "$@"; }

flake() { # flake DIR FAIL_AT: a chain of 5 links, each sleeping a second; FAIL_AT=0 means none fails
  mkdir -p "$1"
  local links="" i
  for i in 1 2 3 4 5; do
    local prev="" fail=""
    [ "$i" -gt 1 ] && prev="echo \${l$((i - 1))} >> \$out;"
    [ "$i" = "$2" ] && fail="echo link $i fails >&2; exit 1;"
    links+="    l$i = mk \"greedy-demo-$run_id-$i\" \"echo building link $i; sleep 1; $fail echo $i > \$out; $prev\";"$'\n'
  done
  cat > "$1/flake.nix" <<NIX
{
  outputs = { self }: let
    system = "$system";
    mk = name: cmd: derivation { inherit name system; builder = "/bin/sh"; PATH = "/usr/bin:/bin"; args = [ "-c" cmd ]; };
$links  in { packages.\${system}.default = l5; };
}
NIX
}

job() { # job NAME FAIL_AT: one CI job on a fresh runner (own HOME, XDG config, project dir)
  local name="$1" dir="$DEMO_DIR/$1"
  flake "$dir/project" "$2"
  (
    cd "$dir/project"
    export HOME="$dir/home" XDG_CONFIG_HOME="$dir/home/.config" CI_PROJECT_DIR="$dir/project"
    export GREEDY_CACHE_URL="file://$DEMO_DIR/cache" GREEDY_SIGNING_KEY_FILE="$DEMO_DIR/signing-key"
    echo; echo "===== pipeline $name: before_script"; $GREEDY bootstrap
    echo "===== pipeline $name: script"; set +e; $GREEDY build; code=$?; set -e
    echo "===== pipeline $name: after_script (build exited $code)"; $GREEDY push
  )
}

nix key generate-secret --key-name "greedy-demo-$run_id" > "$DEMO_DIR/signing-key"
job A 4
# Pipeline B runs on a fresh runner: links 1-3 are not in its store, only in the cache.
nix store delete $(ls -d /nix/store/*-greedy-demo-"$run_id"-[123] 2>/dev/null) >/dev/null 2>&1 || true
job B 0
echo
echo "Pipeline B substituted what pipeline A built before it failed. Files: $DEMO_DIR"
