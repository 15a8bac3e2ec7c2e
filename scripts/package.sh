#!/usr/bin/env bash
# Builds what operators install, from this checkout, without any image registry:
#   - the Debian package   target/package/hangwatch_<version>-1_amd64.deb   (cargo-deb)
#   - the container image  ghcr.io/hangwatch/hangwatch:<version> in podman's local store,
#                          and as an OCI archive target/package/hangwatch_<version>.oci.tar
# Both carry the same stripped binary, stamped with this commit (`hangwatch --version`).
# The image is FROM scratch: the binary, the C libraries it links (from this Debian), CA
# certificates, a default configuration.
#   scripts/package.sh           release build, both built; the output paths printed last
#   scripts/package.sh --check   then prove them: the package installed, started and
#                                purged in a booted Debian, the image run with podman
#                                against a simulated engine (tests/src/bin/package_check.rs)
#   --debug                      package the debug build instead (the suite does, in
#                                tests/tests/package.rs: a release build from scratch
#                                would not fit its time)
# docs/packaging.md says what is where; docs/results/packaging.md has the sizes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*" >&2; }

check=""
profile="release"
for a in "$@"; do
  case "$a" in
    --check) check=1 ;;
    --debug) profile="debug" ;;
    *) echo "package.sh: unknown argument $a (--check, --debug)" >&2; exit 2 ;;
  esac
done

step "tools"
bash scripts/install-deps.sh

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)"
# The commit as agent/build.rs stamps it (git, "-modified" when tracked files differ);
# not exported, so that this build and the suite's share one compiled agent.
commit="$(git rev-parse --short=12 HEAD)"
[ -z "$(git status --porcelain --untracked-files=no)" ] || commit="$commit-modified"
image="ghcr.io/hangwatch/hangwatch:$version"
out="target/package"
mkdir -p "$out"

step "$profile build ($version, commit $commit)"
if [ "$profile" = release ]; then
  cargo build --release --quiet -p hangwatch
else
  cargo build --quiet -p hangwatch
fi
bin="$out/hangwatch"
strip -o "$bin" "target/$profile/hangwatch"

step "Debian package"
sed 's#/usr/local/bin/hangwatch#/usr/bin/hangwatch#' deploy/systemd/hangwatch.service \
  > "$out/hangwatch.service"
grep -q '^ExecStart=/usr/bin/hangwatch ' "$out/hangwatch.service" || {
  echo "package.sh: the unit's ExecStart no longer names /usr/local/bin/hangwatch; fix the sed above" >&2
  exit 1
}
gzip -9n <deploy/debian/hangwatch.1 >"$out/hangwatch.1.gz"
deb="$(cargo deb -p hangwatch --no-build --strip --no-separate-debug-symbols \
  --output "$out" | tail -n 1)"
lintian --tag-display-limit 0 "$deb" >"$out/lintian.txt" 2>&1 || true
echo "lintian: $(grep -c '^[EW]:' "$out/lintian.txt" || true) errors and warnings (see $out/lintian.txt)" >&2

step "container image"
root="$out/image-root"
rm -rf "$root"
mkdir -p "$root/usr/bin" "$root/etc/hangwatch" "$root/etc/ssl/certs" \
  "$root/var/lib/hangwatch" "$root/tmp"
chmod 1777 "$root/tmp"
cp "$bin" "$root/usr/bin/hangwatch"
# The C libraries the binary links and their loader, at the paths it asks for.
for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
cp deploy/hangwatch.toml "$root/etc/hangwatch/hangwatch.toml"
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
tar --sort=name --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$root" -cf "$out/image-root.tar" .
podman import --quiet \
  --change 'ENTRYPOINT ["/usr/bin/hangwatch"]' \
  --change 'CMD ["run", "--config", "/etc/hangwatch/hangwatch.toml"]' \
  --change 'EXPOSE 9477' \
  --change 'ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=utility' \
  --change "LABEL org.opencontainers.image.title=hangwatch" \
  --change "LABEL org.opencontainers.image.version=$version" \
  --change "LABEL org.opencontainers.image.revision=$commit" \
  --change "LABEL org.opencontainers.image.licenses=Apache-2.0" \
  "$out/image-root.tar" "$image" >/dev/null
oci="$out/hangwatch_$version.oci.tar"
rm -f "$oci"
podman save --quiet --format oci-archive -o "$oci" "$image"

if [ -n "$check" ]; then
  step "check: the package in a booted Debian, the image with podman"
  HANGWATCH_DEBIAN_ROOT="$(bash scripts/debian-root.sh | tail -n 1)"
  export HANGWATCH_DEBIAN_ROOT
  cargo build --quiet -p hangwatch-tests --bin package-check
  target/debug/package-check --deb "$deb" --image "$image" --binary "$bin" >&2
fi

step "built"
ls -l "$deb" "$oci" "$bin" >&2
podman image ls "$image" >&2
echo "package: $deb"
echo "image:   $image (archive: $oci)"
