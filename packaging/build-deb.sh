#!/usr/bin/env bash
# Builds the Debian package target/debian/dicom-gw_<version>_<arch>.deb with dpkg-deb (no
# debhelper or cargo-deb needed: every file, mode and maintainer script is spelled out here).
#
#   packaging/build-deb.sh [--binary PATH] [--lintian]
#
# --binary PATH  package this dicom-gw binary instead of running `cargo build --release`
# --lintian      run lintian on the result and fail on errors (it must be installed)
#
# Layout: /usr/bin/dicom-gw, /etc/dicom-gw/*.toml (conffiles), /lib/systemd/system/ units,
# /usr/lib/sysusers.d and tmpfiles.d entries (the dicom-gw account, /var/lib/dicom-gw),
# the man page, /usr/share/doc/dicom-gw/ and /usr/share/dicom-gw/ (Grafana dashboard,
# Prometheus alert rules).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

binary=""
run_lintian=no
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) binary="$2"; shift 2 ;;
    --lintian) run_lintian=yes; shift ;;
    *) echo "usage: $0 [--binary PATH] [--lintian]" >&2; exit 2 ;;
  esac
done

target_dir="${CARGO_TARGET_DIR:-$root/target}"
# DICOM_GW_DEB_VERSION overrides the version (tests build an "upgrade" package with it).
version="${DICOM_GW_DEB_VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)}"
arch=$(dpkg --print-architecture)
out_dir="$target_dir/debian"
deb="$out_dir/dicom-gw_${version}_${arch}.deb"

if [ -z "$binary" ]; then
  nice -n 15 cargo build --release --locked --bin dicom-gw
  binary="$target_dir/release/dicom-gw"
fi
[ -x "$binary" ] || { echo "build-deb: no binary at $binary" >&2; exit 1; }

stage="$out_dir/stage"
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"
umask 022
inst() { # inst MODE SRC DEST
  install -D -m "$1" "$2" "$stage$3"
}

# The binary, stripped (debug info stays in target/).
install -D -m 0755 "$binary" "$stage/usr/bin/dicom-gw"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$stage/usr/bin/dicom-gw"

inst 0644 packaging/dicom-gw.toml /etc/dicom-gw/dicom-gw.toml
inst 0644 packaging/dicom-gw@store.toml /etc/dicom-gw/dicom-gw@store.toml
inst 0644 packaging/dicom-gw@worklist.toml /etc/dicom-gw/dicom-gw@worklist.toml
inst 0644 packaging/dicom-gw.service /lib/systemd/system/dicom-gw.service
inst 0644 packaging/dicom-gw@.service /lib/systemd/system/dicom-gw@.service
inst 0644 packaging/sysusers.conf /usr/lib/sysusers.d/dicom-gw.conf
inst 0644 packaging/tmpfiles.conf /usr/lib/tmpfiles.d/dicom-gw.conf
inst 0644 packaging/grafana-dashboard.json /usr/share/dicom-gw/grafana-dashboard.json
inst 0644 packaging/prometheus-alerts.yml /usr/share/dicom-gw/prometheus-alerts.yml
inst 0644 packaging/prometheus-alerts.test.yml /usr/share/dicom-gw/prometheus-alerts.test.yml

doc="$stage/usr/share/doc/dicom-gw"
inst 0644 README.md /usr/share/doc/dicom-gw/README.md
inst 0644 docs/operations.md /usr/share/doc/dicom-gw/operations.md
inst 0644 packaging/copyright /usr/share/doc/dicom-gw/copyright
mkdir -p "$stage/usr/share/man/man1"
gzip -9n < packaging/dicom-gw.1 > "$stage/usr/share/man/man1/dicom-gw.1.gz"
chmod 0644 "$stage/usr/share/man/man1/dicom-gw.1.gz"
date_rfc=$(date -R -u -d "@$(git log -1 --format=%ct 2>/dev/null || date +%s)")
# A native package (no Debian revision): its changelog is changelog.gz.
cat > "$out_dir/changelog" <<EOF
dicom-gw ($version) unstable; urgency=medium

  * Package built from $(git describe --always --dirty 2>/dev/null || echo "a source tree").

 -- dicom-gw maintainers <dicom-gw@example.org>  $date_rfc
EOF
gzip -9n < "$out_dir/changelog" > "$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"

# Shared-library dependencies: glibc at the highest symbol version the binary uses.
glibc=$(objdump -T "$stage/usr/bin/dicom-gw" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' \
  | sort -V | tail -n1)
depends="libc6 (>= ${glibc:-2.34}), libgcc-s1, systemd, init-system-helpers (>= 1.54)"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)

cat > "$stage/DEBIAN/control" <<EOF
Package: dicom-gw
Version: $version
Architecture: $arch
Maintainer: dicom-gw maintainers <dicom-gw@example.org>
Installed-Size: $size
Depends: $depends
Section: net
Priority: optional
Homepage: https://github.com/dicom-gw/dicom-gw
Description: DICOM gateway daemon: durable C-STORE, forwarding, worklist
 dicom-gw receives DICOM objects by C-STORE, stores them byte for byte and
 acknowledges them only once they are durable; it indexes them, forwards them
 to archives through a durable queue, serves the Modality Worklist and MPPS,
 and offers a JSON admin API with Prometheus metrics.
 .
 The package runs it under systemd as the system user dicom-gw, either all
 services in one process (dicom-gw.service) or each service separately
 (dicom-gw@store.service, dicom-gw@worklist.service), and ships a Grafana
 dashboard and Prometheus alert rules in /usr/share/dicom-gw.
EOF

printf '%s\n' /etc/dicom-gw/dicom-gw.toml /etc/dicom-gw/dicom-gw@store.toml \
  /etc/dicom-gw/dicom-gw@worklist.toml > "$stage/DEBIAN/conffiles"
for s in postinst prerm postrm; do
  install -m 0755 "packaging/debian/$s" "$stage/DEBIAN/$s"
done
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
  | xargs -0 md5sum) > "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/md5sums" "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles"

rm -f "$deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"

if [ "$run_lintian" = yes ]; then
  lintian --fail-on error --suppress-tags-from-file /dev/null "$deb"
fi
