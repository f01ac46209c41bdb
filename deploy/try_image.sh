#!/usr/bin/env bash
# Builds the CPU image with podman and checks that it serves: /health, then a chat completion on the demo model.
#   bash deploy/try_image.sh [PORT]
# Without a registry, the base image (debian:bookworm-slim) is made locally with debootstrap the first time. Where the
# container runtime cannot start containers (crun needs setrlimit, refused in some sandboxes), the image's root
# filesystem is exported and run with chroot as its user instead, which still tests what the image contains.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:-18777}
base=docker.io/library/debian:bookworm-slim

if ! podman image exists "$base"; then
  root=$(mktemp -d)
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
  tar -C "$root" -c . | podman import - "$base" >/dev/null
  rm -rf "$root"
fi
context=$(mktemp -d)
git ls-files -z | xargs -0 cp --parents -t "$context"
cp /usr/local/share/ca-certificates/*.crt "$context/deploy/ca-certificates/" 2>/dev/null || true
podman build --format docker --isolation chroot --network host -f deploy/Dockerfile -t gpt-oss-deno:cpu "$context"
rm -rf "$context"

check() {
  for _ in $(seq 1 60); do curl -sf "localhost:$port/ready" >/dev/null && break; sleep 1; done
  curl -sf "localhost:$port/health" && echo
  curl -sf "localhost:$port/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model": "gpt-oss-tiny-random", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}' && echo
}

if podman run -d --rm --name gptoss-image-check --network host gpt-oss-deno:cpu --port "$port" 2>/tmp/podman-run.err; then
  trap 'podman stop gptoss-image-check >/dev/null' EXIT
  check
  exit 0
fi
echo "podman run failed: $(tail -1 /tmp/podman-run.err); running the image's filesystem with chroot instead" >&2
root=$(mktemp -d)
chmod 755 "$root" # the image's user must be able to enter its own root
id=$(podman create gpt-oss-deno:cpu)
podman export "$id" | tar -C "$root" -x
podman rm "$id" >/dev/null
mkdir -p "$root/data" "$root/models" && chown 10001 "$root/data" "$root/models"
mount -t proc proc "$root/proc" && mount --bind /dev "$root/dev"
cleanup() {
  pkill -f "src/main.ts serve --port $port" || true
  sleep 1
  umount "$root/proc" "$root/dev" || true
  rm -rf "$root"
}
trap cleanup EXIT
chroot --userspec=10001:10001 "$root" /usr/bin/env HOME=/home/gptoss HF_HOME=/models XDG_DATA_HOME=/data \
  sh -c "cd /app && deno run --allow-all --unstable-no-legacy-abort src/main.ts serve --port $port" &
check
