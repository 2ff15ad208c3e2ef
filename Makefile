# torpor: build, test and run. `make help` lists the targets.
SHELL := /bin/bash
IMAGE ?= torpor:dev
KIND_CLUSTER ?= torpor
CHART := charts/torpor

.PHONY: help install build test demo bench kube-binaries clean

help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

node_modules: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch node_modules

install: node_modules ## install npm dependencies

build: node_modules ## type-check and compile to dist/
	npm run build

test: node_modules ## the whole test suite (type-check, unit, runtime, testbed integration)
	npm test

demo: node_modules ## local demo on the generated test model
	npm run demo

bench: node_modules ## benchmarks: prints tables, writes bench-results.json
	npm run bench

kube-binaries: ## build kube-apiserver, controller-manager, scheduler and etcd into the cache
	scripts/build-kube-binaries.sh

clean: ## remove build output
	rm -rf dist
