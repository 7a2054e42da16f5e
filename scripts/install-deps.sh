#!/usr/bin/env bash
# Installs the Debian packages the build and tests need, only when they are
# missing: libclang (bindgen for RocksDB's bindings), a C/C++ toolchain
# (RocksDB, librdkafka), OpenSSL and zstd for librdkafka (TLS, SASL, zstd),
# pkg-config, and stunnel4 and openssl (the TLS tests put a TLS terminator in
# front of the local broker). Needs root (or sudo) the first time; later
# runs change nothing.
set -euo pipefail

missing=()
for package in libclang-dev g++ make pkg-config libssl-dev libzstd-dev openssl stunnel4; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "error: cargo (Rust 1.85 or newer) is required: https://rustup.rs" >&2; exit 1; }
