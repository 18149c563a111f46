// The header grammar of resumable uploads, tus 1.0 and the IETF draft: pure parsing,
// no I/O, no reply. Each header parser returns undefined for an absent header and
// throws a 400-type error (with the reason) for a malformed one; `parseCreation` and
// `parseAppend` read every header a request of their kind carries, into one typed value.
import type { IncomingHttpHeaders } from 'node:http'
import { mediaType, safeBasename } from '../../config.js'
import { BadResumableHeaderError, ResumableMediaTypeError, UploadLengthError } from '../../errors.js'

export const TUS_VERSION = '1.0.0'
export const TUS_CONTENT_TYPE = 'application/offset+octet-stream'
export const IETF_CONTENT_TYPE = 'application/partial-upload'
/** Interop versions of draft-ietf-httpbis-resumable-upload we speak: -03 (5), -04/-05 (6), later (7, 8). */
export const INTEROP_VERSIONS: ReadonlySet<string> = new Set(['5', '6', '7', '8'])
export const CHECKSUM_ALGORITHMS: ReadonlySet<string> = new Set(['sha1', 'sha256', 'md5'])

/** Node joins repeated headers it does not know into one string (only set-cookie is an array). */
function single (headers: IncomingHttpHeaders, name: string): string | undefined {
  return headers[name] as string | undefined
}

/** A non-negative integer header (`Upload-Offset`, `Upload-Length`), as digits only. */
export function integerHeader (headers: IncomingHttpHeaders, name: string): number | undefined {
  const value = single(headers, name)
  if (value === undefined) return undefined
  const trimmed = value.trim()
  if (!/^\d{1,16}$/.test(trimmed) || !Number.isSafeInteger(Number(trimmed))) {
    throw new BadResumableHeaderError(name, 'a non-negative integer')
  }
  return Number(trimmed)
}

/**
 * A structured-field boolean (`Upload-Complete: ?1`). Any other value is ignored, as if
 * the field were absent (the draft: such values MUST cause the field to be ignored).
 */
export function booleanHeader (headers: IncomingHttpHeaders, name: string): boolean | undefined {
  const value = single(headers, name)?.trim()
  return value === '?1' ? true : value === '?0' ? false : undefined
}

export interface Metadata {
  /** The header exactly as the client sent it: HEAD echoes it. */
  raw: string
  values: Map<string, string>
}

/**
 * `Upload-Metadata`: comma-separated `key base64value` pairs (the value may be absent).
 * Keys are unique, without spaces or commas; values must be valid base64.
 */
export function metadataHeader (headers: IncomingHttpHeaders): Metadata | undefined {
  const raw = single(headers, 'upload-metadata')
  if (raw === undefined) return undefined
  const values = new Map<string, string>()
  if (raw.trim() === '') return { raw, values }
  for (const pair of raw.split(',')) {
    const [key, value, extra] = pair.trim().split(' ')
    if (key === undefined || key === '' || extra !== undefined || values.has(key) || /[^\x21-\x7e]/.test(key)) {
      throw new BadResumableHeaderError('upload-metadata', 'unique "key base64value" pairs')
    }
    if (value !== undefined && (value.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(value))) {
      throw new BadResumableHeaderError('upload-metadata', 'base64 values')
    }
    values.set(key, Buffer.from(value ?? '', 'base64').toString('utf8'))
  }
  return { raw, values }
}

export interface Checksum { algorithm: string, digest: string }

/** `Upload-Checksum: <algorithm> <base64 digest>`. An unsupported algorithm is a 400 too. */
export function checksumHeader (headers: IncomingHttpHeaders): Checksum | undefined {
  const value = single(headers, 'upload-checksum')
  if (value === undefined) return undefined
  const [algorithm, digest, extra] = value.trim().split(' ')
  if (algorithm === undefined || digest === undefined || extra !== undefined || !/^[A-Za-z0-9+/]+={0,2}$/.test(digest)) {
    throw new BadResumableHeaderError('upload-checksum', '"<algorithm> <base64 digest>"')
  }
  if (!CHECKSUM_ALGORITHMS.has(algorithm)) {
    throw new BadResumableHeaderError('upload-checksum', `one of the algorithms ${[...CHECKSUM_ALGORITHMS].join(', ')}`)
  }
  return { algorithm, digest }
}

export type Concat = { kind: 'partial' } | { kind: 'final', parts: string[] }

/** `Upload-Concat: partial` or `final;<url> <url> …`. */
export function concatHeader (headers: IncomingHttpHeaders): Concat | undefined {
  const value = single(headers, 'upload-concat')
  if (value === undefined) return undefined
  const trimmed = value.trim()
  if (trimmed === 'partial') return { kind: 'partial' }
  if (trimmed.startsWith('final;')) {
    const parts = trimmed.slice('final;'.length).split(' ').filter((part) => part !== '')
    if (parts.length > 0) return { kind: 'final', parts }
  }
  throw new BadResumableHeaderError('upload-concat', '"partial" or "final;<url> <url> …"')
}

/** The upload id at the end of an upload URL (absolute, or a path). */
export function idOfUrl (url: string): string {
  const path = url.split(/[?#]/, 1)[0]!
  return path.slice(path.lastIndexOf('/') + 1)
}

/** The request's dialect: tus 1.0, or an interop version of the IETF draft. */
export type Dialect = { ietf: false } | { ietf: true, version: string }

/**
 * tus 1.0 needs `Tus-Resumable: 1.0.0`; the IETF draft an interop version we speak.
 * Undefined for anything else (the answer is a 412).
 */
export function dialectOf (headers: IncomingHttpHeaders): Dialect | undefined {
  const interop = headers['upload-draft-interop-version']
  if (typeof interop === 'string' && INTEROP_VERSIONS.has(interop.trim())) return { ietf: true, version: interop.trim() }
  if (interop === undefined && headers['tus-resumable'] === TUS_VERSION) return { ietf: false }
  return undefined
}

/** What a creation (POST) asks for. */
export interface Creation {
  /** `partial` or `final;…` (concatenation), or undefined for an ordinary upload. */
  concat: Concat | undefined
  /** The whole upload's length, when known now. */
  length: number | undefined
  /** tus `Upload-Defer-Length: 1`: the length comes with a later append. */
  deferred: boolean
  /** The draft's `Upload-Complete` (undefined in tus 1.0, or when absent). */
  complete: boolean | undefined
  metadata: Metadata | undefined
  /** From the `filename` (or `name`) metadata, reduced to a safe basename. */
  clientName: string
  /** From the `filetype` (or `type`) metadata, as a media type. */
  clientType: string
}

/**
 * The headers of a creation. `hasBody`: whether the request carries one (the draft's
 * complete creation without Upload-Length is as long as its body).
 * A final upload's length is its partials', so its length headers are not read.
 */
export function parseCreation (headers: IncomingHttpHeaders, dialect: Dialect, hasBody: boolean): Creation {
  const concat = concatHeader(headers)
  let length: number | undefined
  let deferred = false
  let complete: boolean | undefined
  if (concat?.kind !== 'final') {
    complete = dialect.ietf ? booleanHeader(headers, 'upload-complete') : undefined
    length = integerHeader(headers, 'upload-length')
    deferred = headers['upload-defer-length'] !== undefined
    if (dialect.ietf) {
      // Without Upload-Length, a request that says it is complete carries the whole upload:
      // its Content-Length, nothing, or (chunked) whatever arrives before its end.
      if (length === undefined && complete === true) length = hasBody ? integerHeader(headers, 'content-length') : 0
      deferred = false
    } else if (deferred) {
      if (headers['upload-defer-length'] !== '1') throw new UploadLengthError('Upload-Defer-Length must be 1')
      if (length !== undefined) throw new UploadLengthError('Send Upload-Length or Upload-Defer-Length, not both')
    } else if (length === undefined) {
      throw new UploadLengthError('A creation needs Upload-Length or Upload-Defer-Length: 1')
    }
  }
  const metadata = metadataHeader(headers)
  return { concat, length, deferred, complete, metadata, ...fileOf(metadata) }
}

/** The file's name and type, as the metadata gives them: how a creation names its entry, and a restore names it again. */
export function fileOf (metadata: Metadata | undefined): { clientName: string, clientType: string } {
  const values = metadata?.values
  return {
    clientName: safeBasename(values?.get('filename') ?? values?.get('name')),
    clientType: mediaType(values?.get('filetype') ?? values?.get('type'))
  }
}

/** What an append (PATCH, or a creation's body) says about its bytes. */
export interface Append {
  /** Where the bytes go: the client's Upload-Offset (0 for a creation's body). */
  offset: number
  contentLength: number | undefined
  /** The whole upload's length, if the append declares it (deferred length). */
  length: number | undefined
  /** The draft's `Upload-Complete`: true when this append carries the last byte. */
  complete: boolean | undefined
  checksum: Checksum | undefined
}

/**
 * The headers of an append. `creation`: the body of a creation (at offset 0, and without
 * a body no content type is needed); `hasBody`: whether the request carries one.
 */
export function parseAppend (headers: IncomingHttpHeaders, dialect: Dialect, creation: boolean, hasBody: boolean): Append {
  if ((!creation || hasBody) && !appendTypeOk(mediaType(headers['content-type']), dialect)) {
    throw new ResumableMediaTypeError(dialect.ietf ? IETF_CONTENT_TYPE : TUS_CONTENT_TYPE)
  }
  const offset = creation ? 0 : integerHeader(headers, 'upload-offset')
  if (offset === undefined) throw new UploadLengthError('An append needs Upload-Offset')
  return {
    offset,
    contentLength: integerHeader(headers, 'content-length'),
    length: integerHeader(headers, 'upload-length'),
    complete: dialect.ietf ? booleanHeader(headers, 'upload-complete') : undefined,
    checksum: checksumHeader(headers)
  }
}

/**
 * tus appends are application/offset+octet-stream; the draft's application/partial-upload,
 * except that interop version 5 (draft -03) sent none or the tus type.
 */
function appendTypeOk (type: string, dialect: Dialect): boolean {
  if (!dialect.ietf) return type === TUS_CONTENT_TYPE
  return type === IETF_CONTENT_TYPE || (dialect.version === '5' && (type === '' || type === TUS_CONTENT_TYPE))
}
