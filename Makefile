# Shoal — the project's menu. Every target runs as root for the parts that
# touch namespaces (test, demo); see README.md.
GO      ?= go
BIN     := bin/shoal
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
export PATH := $(PATH):/usr/local/go/bin

FUZZTIME ?= 30000x

.PHONY: build test unit e2e fuzz bench lint demo demo-down deps clean

build: ## build bin/shoal
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/shoal

test: build lint ## unit tests, e2e tests in network namespaces (root), brief fuzzing
	$(MAKE) --no-print-directory fuzz
	SHOAL_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -timeout 15m ./...

fuzz: ## run every fuzz target for FUZZTIME (decoders of peer messages, job parser)
	@set -e; for t in api:FuzzParseJob api:FuzzValidateJob state:FuzzDecodeRecords state:FuzzDecodeDigest state:FuzzHLCNeverGoesBackwards state:FuzzApplyDriftBound gossip:FuzzReadRecordFrames overlay:FuzzParseTag lb:FuzzDNSAnswer node:FuzzPeerRecordCheck gossip:FuzzParseKeyring; do \
		pkg=$${t%%:*}; fn=$${t#*:}; \
		echo "fuzz $$fn ($$pkg, $(FUZZTIME))"; \
		$(GO) test -run '^$$' -fuzz "^$$fn\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime 200x ./$$pkg >/tmp/shoal-fuzz.log 2>&1 || { cat /tmp/shoal-fuzz.log; exit 1; }; \
	done

unit: ## tests that need neither root nor namespaces
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /e2e)

e2e: build ## only the e2e tests, verbose, with measurements in the log
	SHOAL_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 15m ./e2e/

bench: build ## benchmarks of the pure packages and e2e measurements
	$(GO) test -run '^$$' -bench . -benchmem $$($(GO) list ./... | grep -v /e2e)
	SHOAL_MEASURE=1 SHOAL_BIN=$(CURDIR)/$(BIN) $(GO) test -count=1 -v -timeout 30m -run Measure ./e2e/

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(find . -name '*.go' -not -path './.git/*')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

deps: ## install the system packages tests and the demo need (Debian, root)
	./scripts/install-deps.sh

demo: deps build ## a 3-node cluster in network namespaces on this machine, serving the demo service on node port 30080
	$(BIN) dev up
	SHOAL_BIN=$(CURDIR)/$(BIN) ./scripts/demo.sh jobs

demo-down: ## remove everything the demo made
	$(BIN) dev down

clean:
	rm -rf bin
