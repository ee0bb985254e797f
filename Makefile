# Tidemark. `make help` lists the targets.

GO          ?= go
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Count-based, not a duration: a duration -fuzztime trips Go 1.26's fuzz
# coordinator race (go.dev/issue/75804) and fails with "context deadline
# exceeded" and no crasher.
FUZZTIME    ?= 100000x
BENCHCOUNT  ?= 6
BIN         := bin/tidemark

.PHONY: help build demo test test-race test-kube cluster-up cluster-down images test-cluster e2e fuzz lint bench clean

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build bin/tidemark
	$(GO) build -o $(BIN) ./cmd/tidemark

demo: ## back up a live PostgreSQL and restore it end to end, then clean up (needs PostgreSQL 15+ binaries)
	$(GO) run ./cmd/tidemark demo

test: test-race fuzz ## every test with the race detector, then the fuzz targets briefly (FUZZTIME executions each)

test-race:
	$(GO) test -race -count=1 -timeout 20m ./...

# The apiserver and etcd are built from the Go module proxy once per machine
# into the test cache (tests/README.md); a cold build takes ~10 minutes.
# The services' kube tests are picked by name: the rest of those packages
# are the local platform's (and `make test` runs them).
test-kube: ## the Kubernetes platform against a real kube-apiserver (built once and cached; ~10 min cold)
	$(GO) run ./tests/kube/cmd/kube-assets
	$(GO) test -race -count=1 -timeout 10m -tags kubeapi ./pkg/platform/kube/... ./tests/deploy/...
	$(GO) test -race -count=1 -timeout 10m -tags kubeapi -run '^TestKube' ./cmd/tidemark
	$(GO) test -race -count=1 -timeout 10m -tags kubeapi -run '^TestKube' ./services/coordinator/ ./services/hookrunner/

# A real single-node Kubernetes (tools/cluster, tests/README.md): needs root;
# its Kubernetes programs are built once into the test cache like test-kube's.
cluster-up: ## start the single-node test cluster (root; ~25 min cold, ~1 min warm); prints its kubeconfig
	$(GO) run ./tools/cluster up

cluster-down: ## stop what cluster-up started and undo its host changes
	$(GO) run ./tools/cluster down

images: ## build and import every image into the running test cluster (versitygw, MariaDB and PostgreSQL included)
	$(GO) run ./tools/cluster images

test-cluster: ## the proof against the running test cluster: pods, CSI volumes, (group) snapshots, restores
	$(GO) test -count=1 -timeout 15m -tags cluster -v ./tests/cluster/...

# Skips (saying why) when no cluster answers at the kubeconfig it finds:
# $TIDEMARK_KUBECONFIG, else the test cluster's (tests/README.md, tests/e2e).
e2e: ## deploy/overlays/dev on the running test cluster, then the end-to-end tests through its NATS
	$(GO) test -count=1 -timeout 20m -tags e2e -v ./tests/e2e/...

fuzz: ## run each fuzz target for FUZZTIME
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./pkg/cenats
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./pkg/blueprint
	$(GO) test -run '^$$' -fuzz '^FuzzDirectDecodeMatchesSDK$$' -fuzztime $(FUZZTIME) ./pkg/cenats
	$(GO) test -run '^$$' -fuzz '^FuzzFastSchemaMatchesReference$$' -fuzztime $(FUZZTIME) ./events

lint: ## go vet and staticcheck (pinned)
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

bench: ## bus vs raw nats.go benchmarks, summarised as medians and ratios
	$(GO) test ./pkg/bus -run '^$$' -bench . -benchtime 10000x -count $(BENCHCOUNT) | tee bench.out
	$(GO) run ./tools/benchratio -baseline raw-app < bench.out

BENCHDIR    ?= $(or $(TMPDIR),/tmp)/tidemark-bench

bench-datamover: ## data mover vs kopia CLI vs tar|zstd (needs zstd, ~3 GiB in BENCHDIR); docs/benchmarks.md
	$(GO) run ./tools/benchmover -dir $(BENCHDIR) -rounds 3

bench-datamover-sweep: ## repository parameters (hash, splitter, compression, parallelism) by measurement
	$(GO) run ./tools/benchmover -dir $(BENCHDIR) -rounds 3 -sweep

clean:
	rm -rf bin bench.out
