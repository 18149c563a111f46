// The upload clients. Bodies are generated on the fly: one preallocated 1 MiB buffer
// of random bytes, written again and again (never read from disk).
// - HTTP (`upload`): wrapped in a multipart head and tail for multipart contenders,
//   sent with node:http, with backpressure, and a Content-Length so every contender
//   sees a sized body.
// - The plugin's channel (`uploadChannel`): the real client library
//   (fastify-chunked-upload/client, i.e. dist/client/index.js) with the ws package
//   injected, given a file-like object whose reads cost no copy, `submit: true`.
// - A bare WebSocket route (`uploadBareWs`): 64 KiB binary frames, then "end".
// - A tus endpoint (`uploadTus`): tus-js-client 4.3.1 given a Buffer, then the upload
//   URL POSTed to /upload.
import { randomBytes, randomFillSync } from 'node:crypto'
import http from 'node:http'
import { performance } from 'node:perf_hooks'
import * as tus from 'tus-js-client'
import WebSocket from 'ws'
import { upload as clientUpload } from 'fastify-chunked-upload/client'

export const MiB = 1024 ** 2
const CHUNK = randomFillSync(Buffer.allocUnsafe(MiB))
const BOUNDARY = `----fcu-bench-${randomBytes(12).toString('hex')}`
const HEAD = Buffer.from(
  `--${BOUNDARY}\r\n` +
  'Content-Disposition: form-data; name="file"; filename="blob.bin"\r\n' +
  'Content-Type: application/octet-stream\r\n\r\n'
)
const TAIL = Buffer.from(`\r\n--${BOUNDARY}--\r\n`)
const EMPTY = Buffer.alloc(0)

/** Resolves on 'drain', or when the request is gone (then the writer stops). */
/**
 * One upload's outcome, settled once (a timeout, an error and the answer may all come):
 * resolves `{ ok, ms, ...result }`, `ok` when the status is `okStatus` and the size is
 * right, then calls `then(ok)`. The caller sets `finish.timer`, cleared on settling.
 */
function settleOnce (resolve, { okStatus, size, then }) {
  const t0 = performance.now()
  let settled = false
  const finish = (result) => {
    if (settled) return
    settled = true
    clearTimeout(finish.timer)
    const ok = result.status === okStatus && result.size === size
    resolve({ ok, ms: performance.now() - t0, ...result })
    then?.(ok)
  }
  return finish
}

function drained (req) {
  return new Promise((resolve) => {
    const done = () => {
      req.off('drain', done)
      req.off('close', done)
      resolve()
    }
    req.on('drain', done)
    req.on('close', done)
  })
}

/**
 * POSTs `size` bytes to /upload as `format` ('multipart' | 'raw'). Never rejects:
 * resolves with { ok, ms, status, size, error }. ok means 200 and the server
 * reported storing exactly `size` bytes.
 */
export function upload ({ port, format, size, agent, timeoutMs = 300_000, writeSize = CHUNK.length }) {
  const head = format === 'multipart' ? HEAD : EMPTY
  const tail = format === 'multipart' ? TAIL : EMPTY
  const headers = {
    'content-type': format === 'multipart' ? `multipart/form-data; boundary=${BOUNDARY}` : 'application/octet-stream',
    'content-length': String(head.length + size + tail.length)
  }
  return new Promise((resolve) => {
    const finish = settleOnce(resolve, { okStatus: 200, size })
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/upload', headers, agent })
    finish.timer = setTimeout(() => req.destroy(new Error(`client timeout after ${timeoutMs} ms`)), timeoutMs)
    req.on('error', (error) => finish({ status: 0, size: -1, error: error.message }))
    req.on('response', (res) => {
      const chunks = []
      res.on('data', (chunk) => chunks.push(chunk))
      res.on('error', (error) => finish({ status: res.statusCode, size: -1, error: error.message }))
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString()
        let body
        try {
          body = JSON.parse(text)
        } catch {
          body = { raw: text.slice(0, 300) }
        }
        const error = res.statusCode === 200 && body.size === size ? undefined : text.slice(0, 300)
        finish({ status: res.statusCode, size: body.size, error })
      })
    })
    const send = async () => {
      if (head.length > 0) req.write(head)
      let left = size
      while (left > 0) {
        if (req.destroyed) return
        const n = Math.min(left, writeSize)
        const at = (size - left) % CHUNK.length
        const more = req.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(at, at + n))
        left -= n
        if (!more) await drained(req)
      }
      if (!req.destroyed) req.end(tail)
    }
    send().catch((error) => req.destroy(error))
  })
}

export async function getJson (port, path) {
  const res = await fetch(`http://127.0.0.1:${port}${path}`)
  if (!res.ok) throw new Error(`GET ${path}: ${res.status}`)
  return await res.json()
}

/**
 * The client library reads a file with slice(start, end).arrayBuffer(). To cost it no
 * more than the other clients (which write views of CHUNK, never copying), every
 * read of n bytes resolves with the same ArrayBuffer: CHUNK's first n bytes. Nobody
 * checks the content, only the size.
 */
const pieces = new Map()
function piece (n) {
  let buffer = pieces.get(n)
  if (buffer === undefined) {
    buffer = new Uint8Array(n)
    for (let at = 0; at < n; at += CHUNK.length) buffer.set(CHUNK.subarray(0, Math.min(CHUNK.length, n - at)), at)
    buffer = buffer.buffer
    if (pieces.size < 16) pieces.set(n, buffer)
  }
  return buffer
}

/** What the client library takes as a file: a name, a size, a type, slice().arrayBuffer(). */
function syntheticFile (size) {
  return {
    name: 'blob.bin',
    size,
    type: 'application/octet-stream',
    lastModified: Date.now(),
    slice: (start, end) => ({ arrayBuffer: async () => piece(end - start) })
  }
}

/**
 * Diagnosis only (the `-zm` contenders): a ws client whose masking key is always zero,
 * so ws sends the frame's own bytes instead of a masked copy. RFC 6455 wants the key
 * unpredictable; this only tells how much of the client's CPU is masking (browsers mask
 * in native code).
 */
class ZeroMaskWebSocket extends WebSocket {
  constructor (url, protocols, options) {
    super(url, protocols, { ...options, generateMask: (mask) => mask.fill(0) })
  }
}

/**
 * Sends `size` bytes over the plugin's channel (ws://…/upload/ws) with the client
 * library, which then POSTs the ref to /upload (`submit: true`); the handler consumes
 * the entry and answers its size. Never rejects: resolves like `upload`.
 */
export async function uploadChannel ({ port, size, timeoutMs = 300_000, zeroMask = false }) {
  const t0 = performance.now()
  try {
    const result = await clientUpload(`http://127.0.0.1:${port}/upload`, [syntheticFile(size)], {
      uploadName: 'file',
      WebSocket: zeroMask ? ZeroMaskWebSocket : WebSocket,
      submit: true,
      signal: AbortSignal.timeout(timeoutMs)
    })
    const file = result.files[0]
    const stored = result.response?.size ?? -1
    const ok = file.ok && result.status === 200 && stored === size
    return { ok, ms: performance.now() - t0, status: result.status ?? 0, size: stored, error: ok ? undefined : JSON.stringify({ file, response: result.response }).slice(0, 300) }
  } catch (error) {
    return { ok: false, ms: performance.now() - t0, status: 0, size: -1, error: String(error?.message ?? error) }
  }
}

const WS_FRAME = 64 * 1024
/** The client waits for its buffer to empty when this much is buffered. */
const WS_HIGH_WATER = MiB

/**
 * Sends `size` bytes to a bare WebSocket route (ws://…/upload/ws) as 64 KiB binary
 * frames, then a text frame "end"; the server answers {"size"} and closes. Waits for
 * the send buffer to flush whenever 1 MiB is buffered. Never rejects.
 */
export function uploadBareWs ({ port, size, timeoutMs = 300_000, zeroMask = false }) {
  return new Promise((resolve) => {
    const finish = settleOnce(resolve, {
      okStatus: 101,
      size,
      then (ok) {
        // Answered: the server closes too. Otherwise (timeout, error) drop the socket now.
        if (ok && ws.readyState === WebSocket.OPEN) ws.close(1000)
        else if (ws.readyState !== WebSocket.CLOSED) ws.terminate()
      }
    })
    const ws = new (zeroMask ? ZeroMaskWebSocket : WebSocket)(`ws://127.0.0.1:${port}/upload/ws`)
    finish.timer = setTimeout(() => finish({ status: 0, size: -1, error: `client timeout after ${timeoutMs} ms` }), timeoutMs)
    ws.on('error', (error) => finish({ status: 0, size: -1, error: error.message }))
    ws.on('close', (code, reason) => finish({ status: 0, size: -1, error: `closed ${code} ${reason}` }))
    ws.on('message', (data) => {
      let body
      try {
        body = JSON.parse(data.toString())
      } catch {
        body = {}
      }
      finish({ status: 101, size: body.size ?? -1, error: body.size === size ? undefined : data.toString().slice(0, 300) })
    })
    ws.on('open', async () => {
      for (let pos = 0; pos < size;) {
        if (ws.readyState !== WebSocket.OPEN) return
        const at = pos % CHUNK.length
        const frame = CHUNK.subarray(at, at + Math.min(WS_FRAME, size - pos))
        pos += frame.length
        if (ws.bufferedAmount < WS_HIGH_WATER) ws.send(frame)
        else await new Promise((resolve) => ws.send(frame, resolve))
      }
      if (ws.readyState === WebSocket.OPEN) ws.send('end')
    })
  })
}

/**
 * tus-js-client takes a Buffer (its Node BufferSource sends subarrays of it, no copy),
 * so the body is materialised once per size from CHUNK: a 1 GiB upload costs the runner
 * 1 GiB of memory, not CPU per upload.
 */
const tusBodies = new Map()
/** Materialises the tus body of this size now (outside a measurement); returns it. */
export function tusBody (size) {
  let body = tusBodies.get(size)
  if (body === undefined) {
    body = Buffer.allocUnsafe(size)
    for (let at = 0; at < size; at += CHUNK.length) CHUNK.copy(body, at, 0, Math.min(CHUNK.length, size - at))
    if (tusBodies.size >= 4) tusBodies.delete(tusBodies.keys().next().value)
    tusBodies.set(size, body)
  }
  return body
}

/** POSTs `body` as JSON; resolves with { status, body } (body parsed, or { raw }). */
function postJson ({ port, path, body, agent }) {
  return new Promise((resolve, reject) => {
    const data = Buffer.from(JSON.stringify(body))
    const req = http.request({
      host: '127.0.0.1', port, method: 'POST', path, agent, headers: { 'content-type': 'application/json', 'content-length': String(data.length) }
    })
    req.on('error', reject)
    req.on('response', (res) => {
      const chunks = []
      res.on('data', (chunk) => chunks.push(chunk))
      res.on('error', reject)
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString()
        try {
          resolve({ status: res.statusCode, body: JSON.parse(text), text })
        } catch {
          resolve({ status: res.statusCode, body: { raw: text.slice(0, 300) }, text })
        }
      })
    })
    req.end(data)
  })
}

/**
 * Uploads `size` bytes with tus-js-client (creation POST, then PATCHes of `chunkSize`
 * bytes, Infinity = one PATCH) to `endpoint`, over `agent` (keep-alive), no retries (a
 * failure must show), then POSTs { file: [uploadUrl] } to /upload, whose handler stats
 * and deletes the file and answers its size. Never rejects: resolves like `upload`.
 */
export function uploadTus ({ port, size, agent, endpoint, chunkSize = Infinity, timeoutMs = 300_000 }) {
  return new Promise((resolve) => {
    const finish = settleOnce(resolve, { okStatus: 200, size })
    const up = new tus.Upload(tusBody(size), {
      endpoint: `http://127.0.0.1:${port}${endpoint}`,
      chunkSize,
      retryDelays: null,
      metadata: { filename: 'blob.bin', filetype: 'application/octet-stream' },
      httpStack: new tus.DefaultHttpStack({ agent }),
      onError: (error) => finish({ status: error.originalResponse?.getStatus() ?? 0, size: -1, error: String(error.message).slice(0, 300) }),
      onSuccess: () => {
        postJson({ port, path: '/upload', body: { file: [up.url] }, agent }).then(
          ({ status, body, text }) => finish({ status, size: body.size ?? -1, error: status === 200 && body.size === size ? undefined : text.slice(0, 300) }),
          (error) => finish({ status: 0, size: -1, error: error.message })
        )
      }
    })
    finish.timer = setTimeout(() => {
      up.abort().catch(() => {})
      finish({ status: 0, size: -1, error: `client timeout after ${timeoutMs} ms` })
    }, timeoutMs)
    up.start()
  })
}
