// An answer given before the request body was read to its end: the exchange cannot go
// on as if the body had been read. Over HTTP/1.1 the unread bytes would be taken for
// the next request, so the connection closes after the answer (`Connection: close`).
// Over HTTP/2 only the stream is concerned (a `Connection` header is not allowed there):
// once the answer is sent, the stream is reset with NO_ERROR, which asks the client to
// stop sending the body (RFC 9113 §8.1); the session and its other streams go on.
// Upload routes call it for Fastify's own `Connection: close` too (set after any body
// parser failed), which over HTTP/2 Node would drop with a warning.
import { Http2ServerResponse, constants } from 'node:http2'
import type { FastifyReply } from 'fastify'

export function closeAfterAnswer (reply: FastifyReply): void {
  const response = reply.raw
  if (!(response instanceof Http2ServerResponse)) {
    reply.header('connection', 'close')
    return
  }
  reply.removeHeader('connection')
  const { stream } = response
  // 'finish': the answer is written. Node resets a stream whose body was never read the
  // same way, a turn later (trailers first); its NO_ERROR reset waits for data still queued.
  stream.once('finish', () => setImmediate(() => stream.close(constants.NGHTTP2_NO_ERROR)))
}
