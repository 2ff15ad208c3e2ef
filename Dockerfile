# syntax=docker/dockerfile:1
# The one image every torpor component runs (operator, gateway, runtime).
#   docker build -t torpor:dev .                                  CPU
#   docker build -t torpor:dev-cuda --build-arg VARIANT=cuda .    NVIDIA GPUs (node-llama-cpp's CUDA prebuilt)
ARG NODE_VERSION=20
ARG VARIANT=cpu

FROM node:${NODE_VERSION}-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm install --no-audit --no-fund
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
RUN npx tsc -p . && npm prune --omit=dev --no-audit --no-fund

FROM node:${NODE_VERSION}-bookworm-slim AS runtime-cpu
FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04 AS runtime-cuda
ARG NODE_VERSION
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl gnupg \
 && curl -fsSL https://deb.nodesource.com/setup_${NODE_VERSION}.x | bash - \
 && apt-get install -y --no-install-recommends nodejs && rm -rf /var/lib/apt/lists/*

FROM runtime-${VARIANT}
ENV NODE_ENV=production
# Return a hibernated context's memory to the OS (see runtime/malloc-tuning.ts).
ENV MALLOC_ARENA_MAX=2 MALLOC_MMAP_THRESHOLD_=131072
WORKDIR /app
COPY --from=build /src/node_modules node_modules
COPY --from=build /src/dist dist
COPY --from=build /src/package.json package.json
# Non-root; the chart also sets a read-only root filesystem (writable: /tmp and the volumes).
USER 10001:10001
ENTRYPOINT ["node"]
CMD ["dist/runtime/main.js"]
