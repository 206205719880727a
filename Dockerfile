# ebserve's image: the native addon built for this image's Node, the TypeScript compiled, and the
# embedded model served on 0.0.0.0:8080 by default (`docker run -p 8080:8080 ebserve:0.1.0`).
# CPU-only: the CUDA objects need nvcc (a CUDA base image); see deploy/k8s/README.md.
#   docker build -t ebserve:0.1.0 .
# Linted by test/deploy.k8s.test.ts (docker is not available where the tests run).

FROM node:20.20.2-bookworm-slim AS build
# g++, make and python3 for node-gyp; npm's bundled node-gyp compiles against this image's Node
# headers (npm_config_nodedir), not a download.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ make python3 \
 && rm -rf /var/lib/apt/lists/*
ENV npm_config_nodedir=/usr/local
WORKDIR /app
COPY package.json package-lock.json ./
# No optional dependencies: @tensorflow/tfjs-node-gpu downloads a GPU libtensorflow at install.
RUN npm ci --omit=optional --no-audit --no-fund && touch node_modules/.installed
COPY Makefile binding.gyp tsconfig.json ./
COPY bin bin
COPY cuda cuda
COPY src src
# The addon (build/Release/ebserve_native.node) and dist/, as `make build` does everywhere; then
# only the runtime dependencies stay.
RUN make build && npm prune --omit=dev --omit=optional --no-audit --no-fund

FROM node:20.20.2-bookworm-slim
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules node_modules
COPY --from=build /app/bin bin
COPY --from=build /app/dist dist
COPY --from=build /app/build/Release/ebserve_native.node build/Release/
COPY models models
COPY policies policies
COPY profiles profiles
# A numeric user (the image's `node`), so Kubernetes' runAsNonRoot can check it.
USER 1000:1000
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
  CMD ["node", "-e", "fetch('http://127.0.0.1:8080/health').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "/app/bin/ebserve"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
