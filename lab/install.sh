#!/bin/sh
# Installs what `ftpalg lab` needs, with apt-get (Debian, Ubuntu; run as
# root): ip from iproute2, iptables and ip6tables from iptables. No FTP
# server or client: the lab brings its own. Idempotent: does nothing when
# the programs are there.
set -eu

PATH="$PATH:/usr/sbin:/sbin"
missing=""
command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
if ! command -v iptables >/dev/null 2>&1 || ! command -v ip6tables >/dev/null 2>&1; then
	missing="$missing iptables"
fi
if [ -z "$missing" ]; then
	exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "lab/install.sh: please install$missing with your package manager" >&2
	exit 1
fi
if [ "$(id -u)" != 0 ]; then
	echo "lab/install.sh: installing$missing needs root" >&2
	exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing
