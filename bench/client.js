// The upload client. Bodies are generated on the fly: one preallocated 1 MiB buffer
// of random bytes, written again and again (never read from disk), wrapped in a
// multipart head and tail for multipart contenders. Sent with node:http, with
// backpressure, and a Content-Length so every contender sees a sized body.
import { randomBytes, randomFillSync } from 'node:crypto'
import http from 'node:http'
import { performance } from 'node:perf_hooks'

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
export function upload ({ port, format, size, agent, timeoutMs = 300_000 }) {
  const head = format === 'multipart' ? HEAD : EMPTY
  const tail = format === 'multipart' ? TAIL : EMPTY
  const headers = {
    'content-type': format === 'multipart' ? `multipart/form-data; boundary=${BOUNDARY}` : 'application/octet-stream',
    'content-length': String(head.length + size + tail.length)
  }
  return new Promise((resolve) => {
    const t0 = performance.now()
    let settled = false
    const finish = (result) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      const ok = result.status === 200 && result.size === size
      resolve({ ok, ms: performance.now() - t0, ...result })
    }
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/upload', headers, agent })
    const timer = setTimeout(() => req.destroy(new Error(`client timeout after ${timeoutMs} ms`)), timeoutMs)
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
        const n = Math.min(left, CHUNK.length)
        const more = req.write(n === CHUNK.length ? CHUNK : CHUNK.subarray(0, n))
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
