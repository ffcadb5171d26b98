# replproxy. `make demo` and `make test` work on a fresh Debian machine with Go.
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
# A count, not a duration: Go 1.26's fuzz coordinator can fail a target with
# "context deadline exceeded" when a duration runs out mid-input (Go issue
# 75804, fixed in 1.27); a count never hits that deadline.
FUZZTIME ?= 200000x

.PHONY: all build test unit fuzz demo bench lint deps clean image

all: build

deps:
	@./scripts/ensure-deps.sh

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/replproxy ./cmd/replproxy
	$(GO) build -o bin/replbench ./cmd/replbench

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# The whole suite: lint, unit and integration tests against real
# redis-server processes under the race detector, then every fuzz target
# for $(FUZZTIME) inputs.
test: deps lint
	$(GO) test -race -count=1 -parallel 4 -timeout 20m ./...
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

fuzz:
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

demo: deps build
	./bin/replbench demo $(DEMO_ARGS)

bench: deps build
	./scripts/bench.sh

image:
	@command -v docker >/dev/null 2>&1 || { echo "error: make image needs a Docker engine"; exit 1; }
	docker build --build-arg VERSION=$(VERSION) -t replproxy:$(VERSION) .

clean:
	rm -rf bin out
