#!/usr/bin/env bash
# Build a Debian bookworm base image (python3 + python3-venv) from Debian's
# packages, for machines that cannot reach an image registry:
#   docker/local-base.sh amd64   -> local/debian:bookworm
#   docker/local-base.sh arm64   -> local/debian-arm64:bookworm  (needs qemu-user-static >= 8 + binfmt)
# Then: edgeopt package ... --base-image local/debian:bookworm
set -euo pipefail
arch=${1:-amd64}
case "$arch" in
  amd64) tag=${2:-local/debian:bookworm} ;;
  arm64) tag=${2:-local/debian-arm64:bookworm} ;;
  *) echo "usage: $0 amd64|arm64 [TAG]" >&2; exit 2 ;;
esac
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
if docker image inspect "$tag" >/dev/null 2>&1; then echo "$tag exists"; exit 0; fi
root=$(mktemp -d /tmp/edgeopt-rootfs-$arch.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --arch="$arch" --include=python3,python3-venv,ca-certificates \
  bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# What a serving image never reads: apt's caches, docs, man pages, locales, time zones, and glibc's
# iconv charset modules (20 MB on arm64; UTF-8 and ASCII are built into glibc, Python uses its own codecs).
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc \
       "$root"/usr/share/man "$root"/usr/share/locale "$root"/usr/share/info "$root"/usr/share/zoneinfo \
       "$root"/usr/lib/*-linux-gnu/gconv
imported=$(tar -C "$root" -c . | docker import --platform "linux/$arch" - "$tag")
if [ "$arch" != amd64 ]; then
  # Docker 20.10's `docker import` records amd64 whatever --platform says: fix the image config.
  python3 - "$tag" "$arch" <<'PY'
import hashlib, io, json, subprocess, sys, tarfile
tag, arch = sys.argv[1], sys.argv[2]
raw = subprocess.run(["docker", "save", tag], check=True, capture_output=True).stdout
src = tarfile.open(fileobj=io.BytesIO(raw))
members = {m.name: (m, src.extractfile(m).read() if m.isfile() else None) for m in src.getmembers()}
manifest = json.loads(members["manifest.json"][1])
old_cfg = manifest[0]["Config"]
cfg = json.loads(members[old_cfg][1])
cfg["architecture"] = arch
if arch == "arm64":
    cfg["variant"] = "v8"
data = json.dumps(cfg).encode()
new_cfg = hashlib.sha256(data).hexdigest() + ".json"
manifest[0]["Config"] = new_cfg
out = io.BytesIO()
with tarfile.open(fileobj=out, mode="w") as dst:
    for name, (m, body) in members.items():
        if name == old_cfg:
            continue
        if name == "manifest.json":
            body = json.dumps(manifest).encode()
            m.size = len(body)
        if name == "repositories" or (m.isdir() is False and body is None):
            pass
        dst.addfile(m, io.BytesIO(body) if body is not None else None)
    info = tarfile.TarInfo(new_cfg); info.size = len(data)
    dst.addfile(info, io.BytesIO(data))
subprocess.run(["docker", "load"], input=out.getvalue(), check=True, capture_output=True)
PY
  docker rmi "$imported" >/dev/null 2>&1 || true   # the mislabelled import, now untagged
fi
echo "built $tag ($(docker image inspect -f '{{.Os}}/{{.Architecture}} {{.Size}}' "$tag"))"
