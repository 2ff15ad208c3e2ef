# torpor: build, test and run. `make help` lists the targets.
SHELL := /bin/bash
IMAGE ?= torpor:dev
KIND_CLUSTER ?= torpor
CHART := charts/torpor

.PHONY: help install build test demo bench gpu-check gpu-check-cpu gpu-check-runtime kube-binaries clean

help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

node_modules: package.json package-lock.json
	npm install --no-audit --no-fund
	@touch node_modules

install: node_modules ## install npm dependencies

build: node_modules ## type-check and compile to dist/
	npm run build

test: node_modules ## the whole test suite (type-check, unit, runtime, testbed integration)
	npm test

demo: node_modules ## the README quickstart end to end on the local testbed (helm install included)
	npm run demo

bench: node_modules ## benchmarks: prints tables, writes bench-results.json
	npm run bench

gpu-check: ## the GPU check on a machine with an NVIDIA GPU and nvcc (no Node.js needed): bench/gpu/run.sh
	bench/gpu/run.sh gpu

gpu-check-cpu: ## the same probe on the CPU, to prove the script (a small model)
	bench/gpu/run.sh cpu

gpu-check-runtime: ## the runtime itself on an NVIDIA GPU; needs dist/ and .gpu-carry/ from bench/gpu/pack-runtime.sh
	bench/gpu/runtime.sh

kube-binaries: ## build kube-apiserver, controller-manager, scheduler and etcd into the cache
	scripts/build-kube-binaries.sh

clean: ## remove build output
	rm -rf dist

.PHONY: cluster-up cluster-down demo-cluster image image-cuda kind-up kind-down kind-load helm-install e2e-kind generate

generate: node_modules ## regenerate crds/ (and the chart's copy) from contract/crd.ts
	npm run generate

cluster-up: build ## local testbed with the chart installed; prints KUBECONFIG= and TORPOR_GATEWAY=
	@node dist/scripts/cluster.js up

cluster-down: ## stop the local testbed
	@node dist/scripts/cluster.js down

demo-cluster: ## run the README quickstart against KUBECONFIG / TORPOR_GATEWAY (from cluster-up)
	@node dist/scripts/quickstart.js

image: ## build the CPU image
	docker build -t $(IMAGE) .

image-cuda: ## build the CUDA image (push it and set image.repository/tag in your values: see README, GPU clusters)
	docker build -t $(IMAGE)-cuda --build-arg VARIANT=cuda .

kind-up: ## kind cluster from kind-config.yaml (needs Docker)
	install -d -m 1777 /tmp/torpor-kind-shared /tmp/torpor-kind-shared/hibernation
	kind create cluster --config kind-config.yaml --name $(KIND_CLUSTER)

kind-down:
	kind delete cluster --name $(KIND_CLUSTER)

kind-load: image ## load the image into kind
	docker tag $(IMAGE) torpor:dev
	kind load docker-image torpor:dev --name $(KIND_CLUSTER)

helm-install: ## install the chart with values-kind.yaml into the current cluster
	kubectl create namespace torpor --dry-run=client -o yaml | kubectl apply -f -
	kubectl apply -f $(CHART)/hibernation-pv-kind.yaml
	helm upgrade --install torpor $(CHART) -n torpor -f $(CHART)/values-kind.yaml --wait --timeout 5m

e2e-kind: kind-up kind-load helm-install ## the quickstart on kind
	kubectl -n torpor port-forward svc/torpor-gateway 8000:80 & pf=$$!; sleep 3; \
	TORPOR_GATEWAY=http://127.0.0.1:8000 node dist/scripts/quickstart.js; rc=$$?; kill $$pf; exit $$rc
