// The header grammar of resumable uploads, tus 1.0 and the IETF draft: pure parsing,
// no I/O. Each parser returns undefined for an absent header and throws a 400-type
// error (with the reason) for a malformed one.
import type { IncomingHttpHeaders } from 'node:http'
import { BadResumableHeaderError } from '../errors.js'

export const TUS_VERSION = '1.0.0'
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
