#!/usr/bin/env bash
# Installs the Debian packages that building and testing Updraft need, when they are missing
# (as root; otherwise says which to install). Called by scripts/test.sh and .ci/run.
set -euo pipefail

# gcc builds Lua 5.1 (vendored by mlua, for the Lua applications) and, with pkg-config, libbpf
# (vendored by libbpf-sys) against libelf and zlib; clang and the libbpf headers build the XDP
# program (bpf/build.rs), so that its tests run for real.
pkgs=()
command -v cc >/dev/null 2>&1 || pkgs+=(gcc)
command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
command -v clang >/dev/null 2>&1 || pkgs+=(clang)
[ -f /usr/include/bpf/bpf_helpers.h ] || pkgs+=(libbpf-dev)
[ -f /usr/include/libelf.h ] || pkgs+=(libelf-dev)
[ -f /usr/include/zlib.h ] || pkgs+=(zlib1g-dev)
# The AF_XDP tests build network namespaces and veth pairs (ip), check that other traffic
# still passes (ping), and start an unprivileged server (setpriv, util-linux).
command -v ip >/dev/null 2>&1 || pkgs+=(iproute2)
command -v ping >/dev/null 2>&1 || pkgs+=(iputils-ping)
command -v setpriv >/dev/null 2>&1 || pkgs+=(util-linux)
if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}"
  else
    echo "deps.sh: missing ${pkgs[*]}; install them with: sudo apt-get install ${pkgs[*]}" >&2
    exit 1
  fi
fi
