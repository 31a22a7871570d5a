// The HTTP face of a running node: /metrics (Prometheus), /healthz (the process answers),
// /readyz (listening, state directory writable, configuration loaded), / (status page) and
// /status.json. With a token, every path but /healthz needs `Authorization: Bearer <token>`.
// Read-only: only GET and HEAD.
import * as http from 'http';
import { createHash, timingSafeEqual } from 'crypto';
import type { Logger } from 'pino';
import type { HttpConfig } from '../config/types';
import { errorMessage } from './errors';

export interface Readiness { ok: boolean; checks: Record<string, boolean> }

export interface HttpFaceSources {
  metrics(): Promise<{ contentType: string; body: string }>;
  readiness(): Readiness;
  statusPage(): Promise<string>;
  statusJson(): Promise<unknown>;
}

export interface RunningHttpFace {
  port: number;
  close(): Promise<void>;
}

/** The process answers: no token, for container and orchestrator health checks. */
export const HEALTH_PATH = '/healthz';
/** Ready for images: listening, state directory writable, configuration loaded. */
export const READY_PATH = '/readyz';
export const METRICS_PATH = '/metrics';

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/** Constant-time check of the Bearer token (hashes first: timingSafeEqual wants equal lengths). */
function authorized(req: http.IncomingMessage, tokenDigest: Buffer | undefined): boolean {
  if (!tokenDigest) return true;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
  return m !== null && timingSafeEqual(digest(m[1]), tokenDigest);
}

export async function startHttpFace(config: HttpConfig, sources: HttpFaceSources, logger: Logger): Promise<RunningHttpFace> {
  const tokenDigest = config.token ? digest(config.token) : undefined;
  const log = logger.child({ component: 'http' });

  const send = (res: http.ServerResponse, req: http.IncomingMessage, status: number, type: string, body: string, extra: http.OutgoingHttpHeaders = {}) => {
    res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff', ...extra });
    res.end(req.method === 'HEAD' ? undefined : body);
  };
  const json = (res: http.ServerResponse, req: http.IncomingMessage, status: number, v: unknown) =>
    send(res, req, status, 'application/json; charset=utf-8', JSON.stringify(v, null, 1) + '\n');

  const server = http.createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      send(res, req, 405, 'text/plain; charset=utf-8', 'read-only: GET or HEAD\n', { allow: 'GET, HEAD' });
      return;
    }
    if (path === HEALTH_PATH) {
      send(res, req, 200, 'text/plain; charset=utf-8', 'ok\n');
      return;
    }
    if (!authorized(req, tokenDigest)) {
      send(res, req, 401, 'text/plain; charset=utf-8', 'a Bearer token is required (Authorization: Bearer <token>)\n', { 'www-authenticate': 'Bearer realm="dicom-deid-router"' });
      return;
    }
    const answer = async (): Promise<void> => {
      switch (path) {
        case READY_PATH: {
          const r = sources.readiness();
          json(res, req, r.ok ? 200 : 503, r);
          return;
        }
        case METRICS_PATH: {
          const m = await sources.metrics();
          send(res, req, 200, m.contentType, m.body);
          return;
        }
        case '/':
        case '/status':
          send(res, req, 200, 'text/html; charset=utf-8', await sources.statusPage(), {
            'content-security-policy': "default-src 'none'; style-src 'unsafe-inline'",
          });
          return;
        case '/status.json':
          json(res, req, 200, await sources.statusJson());
          return;
        default:
          send(res, req, 404, 'text/plain; charset=utf-8', 'not found: /, /status.json, /metrics, /healthz, /readyz\n');
      }
    };
    answer().catch((e: unknown) => {
      log.error({ path, err: errorMessage(e) }, 'HTTP request failed');
      if (!res.headersSent) send(res, req, 500, 'text/plain; charset=utf-8', 'internal error\n');
      else res.destroy();
    });
  });
  server.keepAliveTimeout = 5000;
  server.headersTimeout = 10000;
  server.requestTimeout = 30000;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: config.host, port: config.port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  server.on('error', (e) => log.error({ err: e.message }, 'HTTP server error'));
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : config.port;
  log.info({ host: config.host, port, token: tokenDigest ? 'required' : 'none' }, 'HTTP face listening (/metrics, /healthz, /readyz, /)');
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
