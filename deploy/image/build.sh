#!/usr/bin/env bash
# Builds the node image from a static x86_64-unknown-linux-musl release
# build, with buildah and no base image, and pushes it if given a
# destination:
#
#   deploy/image/build.sh [docker://HOST:PORT/mantle:TAG] [--tls-verify=false]
#
# Needs: rustup's x86_64-unknown-linux-musl target, Debian's musl-tools and
# buildah.
set -euo pipefail
cd "$(dirname "$0")/../.."

target=x86_64-unknown-linux-musl
target_dir=${CARGO_TARGET_DIR:-target}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)

rustup target add "$target" >/dev/null
CC_x86_64_unknown_linux_musl=musl-gcc MANTLE_COMMIT="$commit" \
    cargo build --release --locked -p mantle --target "$target"

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp "$target_dir/$target/release/mantle" "$context/mantle"
strip "$context/mantle"
cp /etc/ssl/certs/ca-certificates.crt "$context/"
cp deploy/image/Containerfile "$context/"

image="localhost/mantle:$version"
buildah build --isolation chroot --layers=false \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.revision="$commit" \
    -t "$image" -f "$context/Containerfile" "$context"
echo "built $image"
if [ $# -gt 0 ]; then
    buildah push "${@:2}" "$image" "$1"
    echo "pushed $image to $1"
fi
