// multipart/form-data: every file part whose field name is an upload name becomes an
// entry, streamed to its writer as it arrives; text fields become the request body.
import type { Readable } from 'node:stream'
import { Busboy, type BusboyConfig, type BusboyFileStream, type BusboyInstance } from '@fastify/busboy'
import type { FastifyRequest } from 'fastify'
import { mediaType, safeBasename } from '../../config.js'
import {
  FieldsLimitError, FieldsTooLargeError, FieldTooLargeError, ForbiddenFieldNameError, MalformedError, TooManyFilesError, UnexpectedFieldError
} from '../../errors.js'
import type { Uploads } from '../../uploads.js'
import { HttpBody, feedEntry } from './body.js'

export interface FieldLimits { maxFields: number, maxFieldSize: number }

/** Names that would reach Object.prototype if a consumer merged the body into an object. */
function isForbidden (name: string): boolean {
  return name === '__proto__' || name in Object.prototype
}

/**
 * A file input left empty: browsers send a part with `filename=""` (and
 * application/octet-stream) but no bytes. That is no file, so it makes no entry. Told
 * by the part's first byte or its end, whichever comes first; a part with a file name
 * (a chosen empty file) or with bytes is a file, and the byte seen stays in the part.
 */
async function isUnchosenFile (file: BusboyFileStream, filename: string | undefined, body: HttpBody): Promise<boolean> {
  if (filename !== undefined && filename !== '') return false
  return await new Promise<boolean>((resolve) => {
    const settle = (unchosen: boolean): void => {
      unregister()
      file.off('data', onData)
      file.off('end', onEnd)
      resolve(unchosen)
    }
    function onData (chunk: Buffer): void {
      file.pause()
      file.unshift(chunk)
      settle(false)
    }
    const onEnd = (): void => settle(true)
    // The body failed first (cut, timed out, shut down): go on as with any part, refused.
    const unregister = body.onFail(() => settle(false))
    file.on('data', onData)
    file.once('end', onEnd)
    file.resume()
  })
}

export async function receiveMultipart (
  uploads: Uploads, request: FastifyRequest, payload: Readable, limits: FieldLimits
): Promise<Record<string, unknown>> {
  let totalEntries = 0
  for (const config of uploads.configs.values()) totalEntries += config.maxEntries
  let parser: BusboyInstance
  try {
    parser = Busboy({
      headers: request.headers as BusboyConfig['headers'],
      defCharset: 'utf8',
      // Parts beyond every name's maxEntries are refused one by one as too_many_files;
      // this bounds how many a hostile client can make us look at.
      limits: { fields: limits.maxFields, fieldSize: limits.maxFieldSize, files: totalEntries + 100 }
    })
  } catch (error) {
    throw new MalformedError((error as Error).message)
  }

  const body = new HttpBody(uploads, payload)
  const fields: Record<string, unknown> = {}
  // Text fields are held in memory: together they may not exceed the route's bodyLimit.
  let fieldBudget = request.routeOptions.bodyLimit
  const onField = (name: string, value: string, _nameTruncated: boolean, valueTruncated: boolean): void => {
    if (isForbidden(name)) return body.fail(new ForbiddenFieldNameError(name))
    if (valueTruncated) return body.fail(new FieldTooLargeError(name, limits.maxFieldSize))
    fieldBudget -= name.length + value.length
    if (fieldBudget < 0) return body.fail(new FieldsTooLargeError(request.routeOptions.bodyLimit))
    const previous = fields[name]
    if (previous === undefined) fields[name] = value
    else if (Array.isArray(previous)) previous.push(value)
    else fields[name] = [previous, value]
  }

  async function receiveFile (fieldName: string, file: BusboyFileStream, filename: string, mimeType: string): Promise<void> {
    if (await isUnchosenFile(file, filename, body)) return
    const config = uploads.configs.get(fieldName)
    if (config === undefined) {
      file.resume()
      throw new UnexpectedFieldError(fieldName, [...uploads.configs.keys()].join(', '))
    }
    // An async `validate` is server time, not client silence.
    const entry = await body.silence.whileBusy(uploads.announce(config, {
      clientName: safeBasename(filename), clientType: mediaType(mimeType), clientSize: undefined
    }))
    try {
      if (entry.failure !== undefined) throw entry.failure
      await feedEntry(entry, file, body)
    } catch (error) {
      // With onEntryError 'continue', an entry's own failure skips the rest of its part.
      if (error !== entry.failure || config.onEntryError === 'fail' || uploads.aborted !== undefined) throw error
      file.resume()
    }
  }

  const parsed = new Promise<void>((resolve, reject) => {
    // Parts are received one after another, in the order they arrived.
    let queue = Promise.resolve()
    parser.on('file', (fieldName, file, filename, _encoding, mimeType) => {
      // A truncated body errors the part's stream; the parser reports it too, so
      // the stream's own error must not go unhandled while the part waits its turn.
      file.on('error', () => {})
      queue = queue.then(() => receiveFile(fieldName, file, filename, mimeType))
      queue.catch(reject)
    })
    parser.on('field', onField)
    parser.on('fieldsLimit', () => reject(new FieldsLimitError(limits.maxFields)))
    parser.on('filesLimit', () => reject(new TooManyFilesError('this request', totalEntries)))
    parser.on('error', reject)
    parser.on('finish', () => { queue.then(resolve, reject) })
  })
  payload.on('data', () => body.silence.heard())
  payload.pipe(parser)
  await body.read(parsed)
  return fields
}
