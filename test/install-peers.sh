#!/bin/sh
# Installs what the end-to-end tests need on Debian 12 (run as root):
# the FTP peers (vsftpd; curl, lftp and python3 ftplib as clients), iproute2,
# iptables, conntrack, systemd (systemd-analyze verifies the unit; no service
# is started), and pure-ftpd extracted from its package (it conflicts with
# vsftpd, so it is not installed: dpkg-deb -x into $FTPALG_PEERS_ROOT,
# default /opt/ftpservers/root, where test/netlab finds it).
#
# Idempotent: installed packages and an extracted pure-ftpd are kept.
#
#   sh test/install-peers.sh              everything
#   sh test/install-peers.sh --pure-ftpd  only the pure-ftpd extraction
set -eu

ROOT=${FTPALG_PEERS_ROOT:-/opt/ftpservers/root}
CACHE=$(dirname "$ROOT")
export DEBIAN_FRONTEND=noninteractive

updated=no
apt_update() {
	if [ "$updated" = no ]; then
		apt-get update -qq
		updated=yes
	fi
}

# install_pkgs installs the packages that dpkg does not show as installed.
install_pkgs() {
	missing=""
	for p in "$@"; do
		if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
			missing="$missing $p"
		fi
	done
	if [ -n "$missing" ]; then
		apt_update
		# No daemon start from maintainer scripts (vsftpd would listen on
		# port 21 of the host); the tests start their own instances.
		policy=/usr/sbin/policy-rc.d
		if [ ! -e "$policy" ]; then
			printf '#!/bin/sh\nexit 101\n' >"$policy"
			chmod 755 "$policy"
			trap 'rm -f "$policy"' EXIT
			trap 'exit 1' INT TERM
		fi
		# shellcheck disable=SC2086
		apt-get install -y -qq --no-install-recommends $missing
	fi
}

# extract_pure_ftpd puts pure-ftpd and libsodium under $ROOT.
extract_pure_ftpd() {
	if [ -x "/usr/sbin/pure-ftpd" ] && [ -x "/usr/sbin/pure-authd" ]; then
		return
	fi
	if [ -x "$ROOT/usr/sbin/pure-ftpd" ] && [ -x "$ROOT/usr/sbin/pure-authd" ]; then
		return
	fi
	# Its libraries, apart from libsodium, are in every Debian system.
	install_pkgs libssl3 libcap2 libpam0g libcrypt1
	apt_update
	mkdir -p "$CACHE" "$ROOT"
	tmp=$(mktemp -d)
	# apt-get download fetches as user _apt when it can write there.
	if id _apt >/dev/null 2>&1; then
		chown _apt "$tmp"
	fi
	(cd "$tmp" && apt-get download pure-ftpd libsodium23)
	for deb in "$tmp"/pure-ftpd_*.deb "$tmp"/libsodium23_*.deb; do
		dpkg-deb -x "$deb" "$ROOT"
		cp "$deb" "$CACHE"/
	done
	rm -rf "$tmp"
	test -x "$ROOT/usr/sbin/pure-ftpd"
	echo "pure-ftpd extracted into $ROOT"
}

case "${1:-}" in
--pure-ftpd)
	extract_pure_ftpd
	;;
"")
	install_pkgs vsftpd lftp curl iproute2 iptables conntrack procps nftables systemd python3
	extract_pure_ftpd
	;;
*)
	echo "usage: $0 [--pure-ftpd]" >&2
	exit 2
	;;
esac
