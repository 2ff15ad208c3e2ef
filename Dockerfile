# syntax=docker/dockerfile:1
# The one image every torpor component runs (operator, gateway, runtime).
#   docker build -t torpor:dev .                                  CPU
#   docker build -t torpor:dev-cuda --build-arg VARIANT=cuda .    NVIDIA GPUs (node-llama-cpp's CUDA prebuilt)
ARG NODE_VERSION=20
ARG VARIANT=cpu
# Declared here: an ARG a FROM line uses must come before the first FROM.
ARG CUDA_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04

FROM node:${NODE_VERSION}-bookworm-slim AS build
ARG VARIANT
# A C++ compiler and git build the runtime addon (scripts/build-runtime-addon.sh): node-llama-cpp's
# addon with torpor's sealed sequence states, linked against its prebuilt llama.cpp libraries.
RUN apt-get update && apt-get install -y --no-install-recommends g++ git && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
# The postinstall step needs runtime/native and scripts/, copied below: it runs after them.
RUN npm install --no-audit --no-fund --ignore-scripts
COPY tsconfig.json ./
COPY contract contract
COPY common common
COPY runtime runtime
COPY operator operator
COPY gateway gateway
COPY fixtures fixtures
COPY testbed testbed
COPY scripts scripts
COPY test test
COPY bench bench
RUN bash scripts/build-runtime-addon.sh && npx tsc -p . && npm prune --omit=dev --no-audit --no-fund
# Keep only this image's llama.cpp binaries: every platform's prebuilt packages together are about
# 670 MB. CPU: linux-x64. CUDA: the CUDA 12 and CUDA 13 ("-ext") builds as well.
RUN cd node_modules/@node-llama-cpp && for d in *; do \
      case "$d" in linux-x64) ;; linux-x64-cuda|linux-x64-cuda-ext) [ "$VARIANT" = cuda ] || rm -rf "$d" ;; *) rm -rf "$d" ;; esac; \
    done

FROM node:${NODE_VERSION}-bookworm-slim AS runtime-cpu
# CUDA 12 runtime: runs on drivers >= 525. node-llama-cpp's primary CUDA build needs CUDA 13
# (drivers >= 580: pass --build-arg CUDA_IMAGE=nvidia/cuda:13.0.0-runtime-ubuntu24.04 where the
# nodes have them); its CUDA 12 fallback carries machine code for some GPUs only and JIT-compiles
# for the others once, into CUDA_CACHE_PATH (the chart points it at a writable volume).
FROM ${CUDA_IMAGE} AS runtime-cuda
ARG NODE_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
 && curl -fsSL https://deb.nodesource.com/setup_${NODE_VERSION}.x | bash - \
 && apt-get install -y --no-install-recommends nodejs && rm -rf /var/lib/apt/lists/*

FROM runtime-${VARIANT}
ENV NODE_ENV=production
# Return a hibernated context's memory to the OS, and keep a generation's decodes on one thread
# pool thread (see runtime/model/process-tuning.ts). The operator and gateway do not mind either.
ENV MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072 UV_THREADPOOL_SIZE=2 GLIBC_TUNABLES=glibc.malloc.hugetlb=1
WORKDIR /app
COPY --from=build /src/node_modules node_modules
COPY --from=build /src/dist dist
COPY --from=build /src/package.json package.json
# Non-root; the chart also sets a read-only root filesystem (writable: /tmp and the volumes).
USER 10001:10001
ENTRYPOINT ["node"]
CMD ["dist/runtime/main.js"]
