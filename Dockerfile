# syntax=docker/dockerfile:1
# dicom-deid-router: compiled with TypeScript in a build stage, run on Node.js 24 LTS as the
# unprivileged `node` user. No salt and no patient data are ever part of the image: the salt comes
# in as a secret file at run time, state and outgoing images live on volumes.
#   docker build -t dicom-deid-router --build-arg REVISION=$(git rev-parse --short HEAD) .
ARG NODE_IMAGE=node:24-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY src ./src
RUN npm run build

FROM ${NODE_IMAGE} AS runtime-deps
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM ${NODE_IMAGE}
ARG REVISION=unknown
ENV NODE_ENV=production \
    DEID_BUILD_REVISION=${REVISION}
WORKDIR /app
COPY package.json ./
COPY --from=runtime-deps /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
# The example configuration for containers; mount your own over /etc/dicom-deid-router.
COPY deploy/config /etc/dicom-deid-router
# Volumes made here belong to `node`, so named volumes start out writable by it.
RUN mkdir -p /var/lib/dicom-deid-router/state /var/lib/dicom-deid-router/outgoing \
 && chown -R node:node /var/lib/dicom-deid-router
USER node
VOLUME ["/var/lib/dicom-deid-router/state", "/var/lib/dicom-deid-router/outgoing", "/etc/dicom-deid-router"]
# DICOM (listen.port) and the HTTP face (http.port) of deploy/config/router.yaml.
EXPOSE 11112 8080
# /healthz: the process answers (no token needed). Node itself makes the request: the slim image
# has no curl.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "require('http').get('http://127.0.0.1:8080/healthz',r=>process.exit(r.statusCode===200?0:1)).on('error',()=>process.exit(1))"]
# SIGTERM finishes the images in flight; SIGHUP reloads stations, studies and destinations.
STOPSIGNAL SIGTERM
ENTRYPOINT ["node", "/app/dist/cli.js"]
CMD ["serve", "--config", "/etc/dicom-deid-router"]
