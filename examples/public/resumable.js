// The page's resumable mode: files go to the route's tus endpoint ({route}/tus) with
// Uppy, driven headless (@uppy/core and @uppy/tus, which the demo bundles as /uppy.js);
// then the page posts their upload URLs to the route, whose handler consumes them.
// Same arguments and same result as the client library's upload(), so the page treats
// the three modes alike.
import { Tus, Uppy } from '/uppy.js'

/** The short codes the page knows, for the plugin's error codes. */
const SHORT_CODES = {
  FST_CHUNKED_UPLOAD_NOT_ACCEPTED: 'not_accepted',
  FST_CHUNKED_UPLOAD_TOO_LARGE: 'too_large',
  FST_CHUNKED_UPLOAD_TOO_MANY_FILES: 'too_many_files',
  FST_CHUNKED_UPLOAD_INVALID: 'invalid',
  FST_CHUNKED_UPLOAD_WRITER_FAILURE: 'writer_failure'
}

/** Each PATCH carries at most this much: the bar is never far ahead of the server's offset. */
const CHUNK_SIZE = 1024 * 1024

/** What a failed tus request says: the server's coded error if it sent one. */
function failureOf (error, response) {
  const xhr = response?.body?.xhr
  if (xhr === undefined || xhr.status === 0) return { code: 'connection_failed', message: error.message }
  try {
    const body = JSON.parse(xhr.responseText)
    if (typeof body.code === 'string') return { code: SHORT_CODES[body.code] ?? body.code, message: body.message }
  } catch {}
  return { code: `http_${xhr.status}`, message: error.message }
}

async function readResponse (response) {
  const text = await response.text()
  try {
    return { status: response.status, response: JSON.parse(text) }
  } catch {
    return { status: response.status, response: text }
  }
}

/**
 * Uploads `items` (`{ file, signal }`: the signal cancels that file) to `url`'s tus
 * endpoint, then posts `{ ...fields, [uploadName]: [upload URLs] }` to `url`.
 * `onProgress(file, { progress, bytes, status })` as for the client library (here
 * `progress` is the bytes sent). Resolves with `{ files, response, status }`.
 */
export async function uploadResumable (url, items, { uploadName, fields = {}, onProgress = () => {} }) {
  const route = new URL(url, globalThis.location.href)
  const endpoint = new URL(route)
  endpoint.pathname += '/tus' // the plugin's resumableSuffix; the query goes along (?slow=1)
  const uppy = new Uppy({ autoProceed: false })
  uppy.use(Tus, {
    endpoint: endpoint.href,
    limit: 3, // files uploading at once, as the client library's concurrency
    chunkSize: CHUNK_SIZE,
    retryDelays: [0, 1000, 3000],
    // Left unfinished (a reload, a lost connection), the same file picked again resumes
    // where the server stopped; a done or cancelled upload is forgotten.
    removeFingerprintOnSuccess: true
  })
  /** Per Uppy file id, while it is uploading: its File, its result, its last progress. */
  const jobs = new Map()
  const settle = (id, outcome, status) => {
    const job = jobs.get(id)
    if (job === undefined) return // settled already (cancelled, say)
    jobs.delete(id)
    Object.assign(job.result, outcome)
    const progress = status === 'done' ? 100 : job.progress
    onProgress(job.file, { progress, bytes: status === 'done' ? job.file.size : job.bytes, status })
  }
  const results = items.map(({ file, signal }) => {
    const result = { name: file.name }
    try {
      const id = uppy.addFile({ name: file.name, type: file.type, data: file, source: 'demo' })
      jobs.set(id, { file, result, progress: 0, bytes: 0 })
      signal?.addEventListener('abort', () => {
        if (!jobs.has(id)) return
        // Uppy aborts the upload and, if the server has it already, terminates it (tus DELETE).
        uppy.removeFile(id)
        settle(id, { ok: false, code: 'cancelled', message: 'cancelled by the client' }, 'cancelled')
      }, { once: true })
    } catch (error) { // a duplicate: Uppy takes a file once
      Object.assign(result, { ok: false, code: 'not_added', message: error.message })
    }
    return result
  })

  uppy.on('upload-progress', (file, { bytesUploaded, bytesTotal }) => {
    const job = jobs.get(file.id)
    if (job === undefined) return
    job.progress = bytesTotal > 0 ? Math.floor(bytesUploaded / bytesTotal * 100) : 0
    job.bytes = bytesUploaded
    onProgress(job.file, { progress: job.progress, bytes: bytesUploaded, status: 'uploading' })
  })
  uppy.on('upload-success', (file, { uploadURL }) => settle(file.id, { ok: true, ref: uploadURL }, 'done'))
  uppy.on('upload-error', (file, error, response) => settle(file.id, { ok: false, ...failureOf(error, response) }, 'failed'))

  try {
    // Settles once every file is done, failed or removed.
    if (jobs.size > 0) await uppy.upload()
  } finally {
    uppy.destroy()
  }
  for (const result of results) {
    if (result.ok === undefined) Object.assign(result, { ok: false, code: 'failed', message: 'the upload did not finish' })
  }

  const refs = results.flatMap((result) => result.ok ? [result.ref] : [])
  const response = await fetch(route, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...fields, [uploadName]: refs })
  })
  return { files: results, ...await readResponse(response) }
}
