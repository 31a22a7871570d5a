// The listening socket of one endpoint: plain TCP, or DICOM TLS (PS3.15 Annex B) when the endpoint has
// a certificate. Association handling is the same either way: the SCP gets a connected socket.
//
// TLS failures (no client certificate, one our CA did not sign, a plain-TCP client on the TLS port, a
// protocol mismatch) are logged with the peer address and OpenSSL's reason code. Certificate contents
// (subject, issuer, serial) are never logged: a subject often names a person or a device.
import * as net from 'net';
import * as tls from 'tls';
import type { Logger } from 'pino';

/** PEM contents (not paths) of a TLS endpoint. */
export interface ServerTls {
  cert: string | Buffer;
  key: string | Buffer;
  /** CA certificates that sign acceptable client certificates. */
  ca?: string | Buffer;
  /** Refuse clients without a certificate signed by `ca`. */
  requireClientCert: boolean;
}

/** Why a TLS handshake failed, in words of OpenSSL/Node (no certificate data). */
export function tlsFailureReason(err: Error & { code?: string; reason?: string }): string {
  const code = err.code ?? '';
  if (code === 'ECONNRESET') return 'connection reset during the TLS handshake';
  if (code === 'ERR_SSL_WRONG_VERSION_NUMBER' || code === 'ERR_SSL_HTTP_REQUEST' || code === 'ERR_SSL_PACKET_LENGTH_TOO_LONG') {
    return `not a TLS client (plain TCP on a TLS port?): ${code}`;
  }
  if (code === 'ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE') return 'client sent no certificate (required)';
  // Node puts OpenSSL's reason in err.reason and prefixes messages with file/line details; the code says it.
  return err.reason ? `${err.reason}${code ? ` (${code})` : ''}` : code || err.message.split('\n')[0].slice(0, 200);
}

/**
 * A server that calls onSocket for each connection: for TLS, once the handshake succeeded (and the client
 * certificate was verified when required).
 */
export function createListeningServer(t: ServerTls | undefined, onSocket: (socket: net.Socket) => void, log: Logger): net.Server {
  if (!t) return net.createServer({ noDelay: true }, onSocket);
  const server = tls.createServer(
    {
      cert: t.cert,
      key: t.key,
      ca: t.ca,
      requestCert: t.requireClientCert || t.ca !== undefined,
      // Verified below, so that the refusal can be logged with OpenSSL's reason (Node's own check
      // closes the socket without telling why).
      rejectUnauthorized: false,
      minVersion: 'TLSv1.2',
      handshakeTimeout: 30_000,
      noDelay: true,
    },
    (socket: tls.TLSSocket) => {
      if (t.requireClientCert && !socket.authorized) {
        const cert = socket.getPeerCertificate();
        const none = !cert || Object.keys(cert).length === 0;
        const reason = none ? 'client sent no certificate (required)' : `client certificate not trusted: ${String(socket.authorizationError ?? 'unknown')}`;
        log.warn({ peer: socket.remoteAddress ?? 'unknown', reason }, 'TLS connection refused');
        socket.destroy();
        return;
      }
      onSocket(socket);
    },
  );
  // A peer that resets mid-handshake is gone by the time the error is reported: remember its address
  // when it connects (the TLS socket's _parent is that TCP socket).
  const peers = new WeakMap<net.Socket, string>();
  server.on('connection', (raw: net.Socket) => {
    if (raw.remoteAddress) peers.set(raw, raw.remoteAddress);
  });
  server.on('tlsClientError', (err: Error, socket: tls.TLSSocket) => {
    const raw = (socket as unknown as { _parent?: net.Socket })._parent;
    const peer = socket.remoteAddress ?? (raw ? peers.get(raw) : undefined) ?? 'unknown';
    log.warn({ peer, reason: tlsFailureReason(err) }, 'TLS connection refused');
  });
  return server;
}
