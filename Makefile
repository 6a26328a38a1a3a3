# ftpalg — build, test, fuzz.
GO       ?= go
FUZZTIME ?= 30s
BIN      := bin/ftpalg

.PHONY: build test unit deps fuzz bench clean demo deb

build:
	$(GO) build -o $(BIN) ./cmd/ftpalg

# The whole suite: the package tests with the race detector (make unit),
# then the end-to-end tests in network namespaces (root; peers are
# installed first when missing).
test: deps build
	$(GO) vet ./...
	$(MAKE) unit
	$(GO) test -count=1 -timeout 20m ./test/...

# The lab: builds ftpalg, installs iproute2 and iptables when missing, and
# runs `ftpalg lab` (root; no FTP server or client needed). LABFLAGS are
# passed on, e.g. make demo LABFLAGS="--capture lab.pcap".
demo: build
	sh lab/install.sh
	./$(BIN) lab $(LABFLAGS)

# The package tests (not test/), with the race detector: no root needed;
# as root they include the namespace tests of alg/inspect, rules,
# conntrack, lab and cmd.
unit:
	$(GO) test -count=1 -race -timeout 15m ./alg/... ./nat/... ./rules/... ./conntrack/... ./lab/... ./cmd/...

# Debian packages the end-to-end tests drive (vsftpd, pure-ftpd, curl, lftp,
# iptables, conntrack). Needs root; does nothing when all are present.
deps:
	bash test/install-peers.sh

# Every fuzz target for FUZZTIME (test/fuzz.sh: one target per go test run).
fuzz:
	GO="$(GO)" FUZZTIME="$(FUZZTIME)" bash test/fuzz.sh

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./...

# The Debian package (bin/ftpalg_VERSION_ARCH.deb): the binary, the systemd
# unit, /etc/ftpalg/ftpalg.toml, the examples and the man page generated
# from the flags. nfpm comes through the Go module proxy at a fixed version.
NFPM    ?= $(GO) run github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
VERSION ?= 0.1.0~git$(shell git rev-parse --short HEAD 2>/dev/null || echo 0)
ARCH    ?= $(shell $(GO) env GOARCH)
deb:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.buildVersion=$(VERSION)" -o $(BIN) ./cmd/ftpalg
	env -u GOARCH $(GO) run -ldflags "-X main.buildVersion=$(VERSION)" ./cmd/ftpalg manpage | gzip -9n > bin/ftpalg.8.gz
	VERSION=$(VERSION) ARCH=$(ARCH) $(NFPM) package --config contrib/deb/nfpm.yaml --packager deb --target bin/

clean:
	rm -rf bin
